"""Tasks end to end: the panel, a real Redis, a real node agent process and a real VE."""

import pytest

from tests.panel.conftest import make_ve, wait_task
from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.reconcile import reconcile_node
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

pytestmark = [pytest.mark.root, pytest.mark.django_db(transaction=True)]


def test_it_creates_stops_starts_and_destroys_a_real_ve(node_agent, engine_root, api_for, client_for, owner,
                                                       node, monkeypatch):
    from vzengine import Engine

    monkeypatch.setenv("VZ_ROOT", str(engine_root))  # for the reconcile run in this process

    engine = Engine(engine_root)
    api = api_for(owner)
    response = api.post("/api/ves/", {"ostemplate": "tiny", "hostname": "life1", "root_password": "s3cret-pass"},
                        format="json")
    assert response.status_code == 202, response.content
    create = wait_task(Task.objects.get(pk=response.json()["id"]), timeout=240)
    assert create.status == "completed", (create.error, create.traceback, create.log)
    ve = create.ve
    ve.refresh_from_db()
    assert ve.status == "running" and ve.hostname == "life1"
    assert engine.status(ve.ctid).status == "running"
    assert create.progress == 100 and create.log_lines >= 2

    client_for(owner).post(f"/ves/{ve.ctid}/stop/")
    stop = wait_task(Task.objects.filter(ve=ve, action="stop").get())
    assert stop.status == "completed", stop.error
    ve.refresh_from_db()
    assert ve.status == "stopped" and engine.status(ve.ctid).status == "stopped"
    assert AuditEntry.objects.get(action="ve.stop", ctid=ve.ctid).result == "completed"

    # Started behind the panel's back: the reconcile job notices.
    engine.start(ve.ctid)
    reconcile_node(node.name)
    ve.refresh_from_db()
    assert ve.status == "running"
    assert AuditEntry.objects.filter(action="ve.reconcile", ctid=ve.ctid).exists()

    api.delete(f"/api/ves/{ve.ctid}/")
    destroy = wait_task(Task.objects.filter(ve=ve, action="destroy").get())
    assert destroy.status == "completed", destroy.error
    ve.refresh_from_db()
    assert ve.status == "destroyed" and not engine.exists(ve.ctid)
    assert api.get(f"/api/ves/{ve.ctid}/").status_code == 404


def test_an_engine_refusal_fails_the_task_in_plain_words(node_agent, engine_root, api_for, owner, node):
    ghost = make_ve(owner, node, 990, status="stopped")  # the panel knows it, the engine does not
    task_id = api_for(owner).post("/api/ves/990/start/").json()["id"]
    task = wait_task(Task.objects.get(pk=task_id))
    assert task.status == "failed"
    assert task.error and "Traceback" not in task.error and not task.error_ref
    assert "990" in task.error
    ghost.refresh_from_db()
    assert ghost.status == "missing"


def test_reconcile_adopts_unknown_ves_and_marks_vanished_ones(root_agent, engine_root, owner, node):
    from vzengine import Engine

    engine = Engine(engine_root)
    vanished = make_ve(owner, node, 991, status="running")
    engine.create(992, "tiny", hostname="cli-made")
    try:
        counts = reconcile_node(node.name)
        vanished.refresh_from_db()
        adopted = VE.objects.get(ctid=992)
        assert vanished.status == "missing"
        assert adopted.owner is None and adopted.hostname == "cli-made" and adopted.status == "stopped"
        assert counts["adopted"] == 1 and counts["missing"] == 1
        assert node.templates.filter(name="tiny").exists()
    finally:
        engine.destroy(992)


def test_start_resumes_a_suspended_ve_with_its_processes(node_agent, engine_root, client_for, owner, node):
    from vzengine import Engine

    engine = Engine(engine_root)
    ctid = 9601
    engine.create(ctid, "tiny", hostname="sleeper")
    try:
        engine.start(ctid, wait_boot=True)
        engine.exec(ctid, "setsid sleep 600 </dev/null >/dev/null 2>&1 &")
        pid = engine.exec(ctid, "pidof sleep").stdout.strip()
        assert pid
        engine.suspend(ctid)
        ve = make_ve(owner, node, ctid, status="suspended", hostname="sleeper")
        page = client_for(owner).get(f"/ves/{ctid}/").content.decode()
        assert ">Resume</button>" in page
        client_for(owner).post(f"/ves/{ctid}/start/")
        task = wait_task(Task.objects.get(ve=ve, action="start"))
        assert task.status == "completed", (task.error, task.log)
        assert engine.is_running(ctid) and not engine.is_suspended(ctid)
        assert engine.exec(ctid, "pidof sleep").stdout.strip() == pid  # the same process, not a new boot
        ve.refresh_from_db()
        assert ve.status == "running"
    finally:
        if engine.exists(ctid):
            engine.destroy(ctid)


def test_with_two_agents_a_slow_task_does_not_hold_up_another_ves(node_agent, redis_url, panel_state, test_db_path,
                                                                   engine_root, client_for, owner, node):
    """What `serve` runs (VZPANEL_AGENT_WORKERS): a second agent takes the next VE's task meanwhile."""
    from rq import Worker

    from tests.panel.conftest import start_agent, stop_agent, wait_for
    from vzengine import Engine
    from vzpanel.tasks.queue import get_queue

    second = start_agent(redis_url, panel_state, test_db_path, VZ_ROOT=str(engine_root))
    engine = Engine(engine_root)
    slow, quick = 9611, 9612
    try:
        queue = get_queue(node.name)
        wait_for(lambda: len(Worker.all(queue=queue)) >= 2, 30, "two agents on the queue")
        for ctid in (slow, quick):
            engine.create(ctid, "tiny", hostname=f"c{ctid}")
        engine.start(slow, wait_boot=True)
        slow_ve = make_ve(owner, node, slow)
        quick_ve = make_ve(owner, node, quick, status="stopped")
        client = client_for(owner)
        client.post(f"/ves/{slow}/stop/")  # a clean stop of BusyBox init takes ~2.5 s
        client.post(f"/ves/{quick}/start/")
        stop = wait_task(Task.objects.get(ve=slow_ve, action="stop"))
        start = wait_task(Task.objects.get(ve=quick_ve, action="start"))
        assert stop.status == start.status == "completed", (stop.error, start.error)
        assert start.finished_at < stop.finished_at  # it did not wait behind the stop
    finally:
        stop_agent(second)
        for ctid in (slow, quick):
            if engine.exists(ctid):
                engine.destroy(ctid)
