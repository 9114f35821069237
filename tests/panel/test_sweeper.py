"""The sweeper ends tasks whose node agent died under them, and leaves running ones alone.

Real RQ workers on the private Redis: a job that runs (a sleep standing in for a long task) is left
alone while its worker lives, and while its work-horse outlives a killed worker; once both are gone
(killed by pid, as the node agent dies) its task is errored in words. Through reconcile, the VE's state
is re-read from a real engine.
"""

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.panel.conftest import make_ve, wait_for
from vzpanel.classroom.models import Course, Membership
from vzpanel.nodes.models import Node
from vzpanel.tasks import sweeper
from vzpanel.tasks.models import Task
from vzpanel.tasks.queue import get_queue

pytestmark = pytest.mark.django_db(transaction=True)
LONG_AGO = timedelta(minutes=5)


@pytest.fixture(autouse=True)
def _no_engine_here(monkeypatch, panel_state):
    """after_failure() re-reads VEs through the engine: point it at an empty root, not the host's."""
    monkeypatch.setenv("VZ_ROOT", str(panel_state / "no-engine-here"))


def task_row(ve, status, job_id="", *, node=None, age=LONG_AGO, **fields):
    at = timezone.now() - age
    task = Task.objects.create(ve=ve, node=node or ve.node, action=fields.pop("action", "stop"), status=status,
                               rq_job_id=job_id, started_at=at if status == "running" else None, **fields)
    Task.objects.filter(pk=task.pk).update(created_at=at)
    task.refresh_from_db()
    return task


def test_queued_tasks_whose_job_vanished_are_ended_and_the_others_left(owner, node):
    lost = task_row(make_ve(owner, node, 111), "queued", "task-gone")
    fresh = task_row(make_ve(owner, node, 112), "queued", "", age=timedelta(0))  # its job is being queued
    other = Node.objects.create(name="elsewhere")  # nobody serves this queue: the job waits there
    waiting_ve = make_ve(owner, other, 113)
    waiting = task_row(waiting_ve, "queued", "task-waiting", node=other)
    get_queue(other.name).enqueue("time.sleep", args=(1,), job_id="task-waiting")
    assert sweeper.sweep(node) == {"died": 0, "lost": 1, "parents": 0}
    assert sweeper.sweep(other) == {"died": 0, "lost": 0, "parents": 0}
    lost.refresh_from_db(), fresh.refresh_from_db(), waiting.refresh_from_db()
    assert lost.status == "errored" and "lost this task before it ran" in lost.error and lost.finished_at
    assert "Errored: The node agent's queue lost" in lost.log
    assert (fresh.status, waiting.status) == ("queued", "queued")
    # a running task whose job is gone ended too (its job cannot finish it any more)
    gone = task_row(make_ve(owner, node, 114), "running", "")
    assert sweeper.sweep(node)["died"] == 1
    gone.refresh_from_db()
    assert gone.status == "errored" and gone.error == sweeper.DIED


def children_of(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def test_a_running_task_is_left_alone_until_its_worker_and_work_horse_are_gone(plain_agent, owner, node):
    from rq.job import Job

    task = task_row(make_ve(owner, node, 121), "running", "task-long")
    job = get_queue(node.name).enqueue("time.sleep", args=(60,), job_id="task-long", result_ttl=0)
    wait_for(lambda: job.get_status(refresh=True) == "started", 20, "the agent to start the job")
    horse = wait_for(lambda: children_of(plain_agent.pid), 10, "the work-horse")[0]
    try:
        assert sweeper.sweep(node)["died"] == 0  # worker and horse alive
        # The agent dies; its work-horse (own process group) carries on with the job by itself.
        plain_agent.send_signal(signal.SIGKILL)
        plain_agent.wait()
        assert Job.fetch("task-long", connection=job.connection).get_status() == "started"
        assert sweeper.sweep(node)["died"] == 0
        task.refresh_from_db()
        assert task.status == "running"
    finally:
        os.kill(horse, signal.SIGKILL)  # ours: started by this test's agent
    wait_for(lambda: not Path(f"/proc/{horse}").exists() or Path(f"/proc/{horse}/stat").read_text().split()[2] == "Z",
             10, "the work-horse to die")
    time.sleep(0.2)
    counts = sweeper.sweep(node)
    task.refresh_from_db()
    assert counts["died"] == 1 and task.status == "errored", (counts, task.status)
    assert task.error == "The node agent stopped while this task ran; the VE's state was re-read."


def test_a_class_operation_whose_agent_died_is_closed_with_retry(client_for, teacher, node):
    from vzpanel.classroom import services
    from vzpanel.classroom.jobs import latest_children

    course = Course.objects.create(name="Dead agent", teacher=teacher, node=node, ostemplate="tiny")
    students = []
    for i in range(3):
        user = type(teacher).objects.create_user(f"d{i}@example.edu", role="student", teacher=teacher)
        students.append(Membership.objects.create(course=course, user=user, ve=make_ve(user, node, 131 + i)))
    parent = task_row(None, "running", "class-9-abc", node=node, action="class.start", params={"course": course.pk})
    done = task_row(students[0].ve, "completed", "class-9-abc", action="start", parent=parent,
                    params={"course": course.pk, "membership": students[0].pk})
    running = task_row(students[1].ve, "running", "class-9-abc", action="start", parent=parent,
                       params={"course": course.pk, "membership": students[1].pk})
    queued = task_row(students[2].ve, "queued", "class-9-abc", action="start", parent=parent,
                      params={"course": course.pk, "membership": students[2].pk})
    legacy = task_row(make_ve(teacher, node, 139), "running", "", action="start", params={"course": course.pk})
    counts = sweeper.sweep(node)
    assert counts == {"died": 1, "lost": 1, "parents": 1}
    for t in (parent, done, running, queued, legacy):
        t.refresh_from_db()
    assert done.status == "completed" and running.status == "errored" and queued.status == "errored"
    assert legacy.status == "running"  # a classroom row without its job id: cannot tell, left alone
    assert parent.status == "failed" and "2 of 3 did not succeed" in parent.error
    assert len(latest_children(parent)) == 3
    page = client_for(teacher).get(f"/classes/{course.pk}/").content.decode()
    assert page.count('class="btn btn-sm btn-primary retry"') == 2 and "The node agent stopped" in page
    assert services.label(parent.action) == "start"


@pytest.mark.root
def test_reconcile_sweeps_and_rereads_the_ves_state(root_agent, engine_root, owner, node):
    from vzengine import Engine
    from vzpanel.nodes.reconcile import reconcile_node

    eng = Engine(engine_root)
    ctid = 150 + os.getpid() % 50
    try:
        eng.create(ctid, "tiny", hostname="swept")  # stopped
        ve = make_ve(owner, node, ctid, status="running")  # the row still says what the dead stop found
        task = task_row(ve, "running", "task-of-a-dead-agent")
        counts = reconcile_node(node.name)
        task.refresh_from_db(), ve.refresh_from_db()
        assert counts["swept"] == 1 and task.status == "errored" and "node agent stopped" in task.error
        assert ve.status == "stopped"
    finally:
        if eng.exists(ctid):
            eng.destroy(ctid)
