"""Classrooms end to end: the panel, a real node agent (RQ worker) and real VEs on a private engine root.

A class of 30 from a golden image that a teacher froze from their own VE; one student's VE fails and is
retried; a student signs in with a printed link and finds the image's marker; the whole class is reset.
Then the idle policy suspends a VE with CRIU and opening the console wakes it, the lab schedule stops
and starts the class, and the course ends with its VEs backed up and its accounts removed.
"""

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from tests.panel.conftest import make_ve, start_agent, stop_agent, wait_for, wait_task
from vzpanel.accounts.models import User
from vzpanel.classroom import services
from vzpanel.classroom.jobs import tick
from vzpanel.classroom.models import Course, LabSession, Membership
from vzpanel.nodes.models import Template
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE
from vzpanel.ves.services import next_ctid

pytestmark = [pytest.mark.root, pytest.mark.django_db(transaction=True)]

MARKER = "golden-image-marker-42"
# Addresses and host ports of this run's VEs, apart from other engine roots on the machine.
IP_POOL = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 250}.0/24"
SSH_FIRST = 40000 + os.getpid() % 200 * 100
SSH_PORTS = f"{SSH_FIRST}-{SSH_FIRST + 99}"


@pytest.fixture
def class_agent(redis_url, panel_state, test_db_path, transactional_db, engine_root, monkeypatch):
    """A node agent on the private engine root, with this run's IP pool and SSH ports."""
    monkeypatch.setenv("VZ_ROOT", str(engine_root))  # for tick() in this process
    monkeypatch.setenv("VZPANEL_SSH_PORTS", SSH_PORTS)
    proc = start_agent(redis_url, panel_state, test_db_path, VZ_ROOT=str(engine_root), VZ_IP_POOL=IP_POOL,
                       VZPANEL_SSH_PORTS=SSH_PORTS, VZPANEL_CLASS_PARALLEL="8")
    yield proc
    stop_agent(proc)


def wait_done(task, timeout=150):
    return wait_task(task, timeout=timeout)


def roster_csv(n, prefix):
    return "name,email,group\n" + "".join(f"Student {i:02d},{prefix}{i:02d}@example.edu,g{i % 3}\n" for i in range(n))


def cat_marker(engine, ctid):
    return engine.exec(ctid, "cat /root/MARKER 2>/dev/null").stdout.strip()


def test_a_class_of_30_gets_running_ves_from_a_frozen_image_and_is_reset(class_agent, clean_engine, teacher, node,
                                                                          plan, client_for):
    engine = clean_engine
    # The teacher prepares one of their own VEs and freezes it as the course's golden image.
    gold = next_ctid()
    engine.create(gold, "tiny", hostname="golden")
    engine.start(gold, wait_boot=True)
    assert engine.exec(gold, f"echo {MARKER} > /root/MARKER").returncode == 0
    gold_ve = make_ve(teacher, node, gold)
    teach = client_for(teacher)
    response = teach.post("/classes/new/", {"name": "Linux 30", "image": f"ve:{gold_ve.pk}", "plan": plan.pk,
                                            "ssh_access": "on", "idle_minutes": 0, "idle_action": "suspend"})
    assert response.status_code == 302, response.content
    course = Course.objects.get(name="Linux 30")
    freeze = wait_done(services.image_task(course))
    assert freeze.status == "completed", (freeze.error, freeze.log)
    course.refresh_from_db()
    assert course.ostemplate == f"course{course.pk}-v1" and course.image_version == 1
    assert Template.objects.filter(node=node, name=course.ostemplate).exists()

    upload = SimpleUploadedFile("roster.csv", roster_csv(30, "s").encode())
    assert teach.post(f"/classes/{course.pk}/roster/", {"roster": upload}).status_code == 302
    assert User.objects.filter(role="student", teacher=teacher, username__endswith="@example.edu").count() == 30

    # A VE the panel does not know already holds the id the 7th student would get: that one fails.
    squatter = next_ctid() + 6
    engine.create(squatter, "tiny", hostname="squatter")
    t0 = time.monotonic()
    response = teach.post(f"/classes/{course.pk}/provision/", follow=True)
    assert Task.objects.filter(action="class.provision").exists(), [str(m) for m in response.context["messages"]]
    parent = Task.objects.get(action="class.provision")
    wait_done(parent)
    took = time.monotonic() - t0
    children = list(parent.children.select_related("ve"))
    assert len(children) == 30
    failed = [c for c in children if c.status != "completed"]
    assert parent.status == "failed" and len(failed) == 1, [(c.ve.ctid, c.status, c.error) for c in children]
    assert failed[0].ve.ctid == squatter and "already exists" in failed[0].error
    victim = Membership.objects.get(ve=failed[0].ve)
    page = teach.get(f"/classes/{course.pk}/").content.decode()
    row = re.search(rf'<tr id="member-{victim.pk}".*?</tr>', page, re.S).group(0)
    assert "already exists" in row and "Retry" in row

    assert teach.post(f"/classes/{course.pk}/retry/{victim.pk}/").status_code == 302
    wait_for(lambda: Task.objects.filter(parent=parent).count() == 31, 10, "the retry")
    parent = wait_done(parent)
    assert parent.status == "completed", parent.error
    victim.refresh_from_db()
    assert victim.ve.ctid != squatter and victim.ve.status == "running"

    members = list(course.students().select_related("ve", "user"))
    assert len(members) == 30 and len({m.ve.ctid for m in members}) == 30
    assert len({m.ssh_port for m in members}) == 30
    for m in members:
        info = engine.status(m.ve.ctid)
        assert info.status == "running" and m.ve.status == "running"
        assert info.extra.get("portfwd") == [f"tcp:{m.ssh_port}:22"]
        assert info.extra["resources"]["limits"]["RAM"] == plan.ram_mb << 20
        assert m.user.role == "student" and m.user.teacher == teacher
        assert cat_marker(engine, m.ve.ctid) == MARKER
    print(f"\n30 students provisioned in {took:.1f} s (before the retry)")

    # A student signs in with the printed link and finds their VE, its SSH details and the marker.
    sheet = teach.post(f"/classes/{course.pk}/sheet/", {"kind": "links", "who": "new"})
    rows = dict(sheet.context["rows"])
    sue = members[4]
    link = rows[next(m for m in rows if m.pk == sue.pk)]
    student = Client()
    assert student.post(link.split("testserver", 1)[1]).status_code == 302
    mine = student.get(f"/classes/{course.pk}/").content.decode()
    assert f"/ves/{sue.ve.ctid}/" in mine and f"ssh -p {sue.ssh_port} root@" in mine
    assert f"/ves/{members[5].ve.ctid}/" not in mine
    assert student.get(f"/ves/{sue.ve.ctid}/").status_code == 200
    assert student.get(f"/ves/{members[5].ve.ctid}/").status_code == 404
    assert cat_marker(engine, sue.ve.ctid) == MARKER

    # Every student deletes the marker (and leaves some work); the whole class is reset to the image.
    for m in members:
        engine.exec(m.ve.ctid, f"rm /root/MARKER; echo mine > /root/work-{m.pk}")
        assert cat_marker(engine, m.ve.ctid) == ""
    t0 = time.monotonic()
    response = teach.post(f"/classes/{course.pk}/action/", {"action": "reset", "target": "all", "keep_work": "on"})
    assert response.status_code == 302
    reset = wait_done(Task.objects.get(action="class.reset"))
    print(f"30 VEs reset in {time.monotonic() - t0:.1f} s")
    assert reset.status == "completed", reset.error
    for m in members:
        assert engine.status(m.ve.ctid).status == "running"
        assert cat_marker(engine, m.ve.ctid) == MARKER
        assert engine.exec(m.ve.ctid, f"cat /root/work-{m.pk}").returncode != 0
        snaps = [s.name for s in engine.snapshot_list(m.ve.ctid, sizes=False)]
        assert len(snaps) == 1 and snaps[0].startswith("work-")


def test_idle_ves_sleep_the_console_wakes_them_the_schedule_runs_and_the_course_ends(class_agent, clean_engine,
                                                                                      teacher, node, client_for):
    from vzengine.checkpoint import checkpoint_problem

    engine = clean_engine
    course = services.create_course(teacher, name="Idle lab", ostemplate="tiny", ssh_access=False, idle_minutes=10,
                                    idle_action="suspend")
    services.import_roster(teacher, course, roster_csv(2, "idle").encode())
    wait_done(services.provision(teacher, course))
    m1, m2 = course.students().select_related("ve", "user").order_by("user__username")
    ve1, ve2 = m1.ve, m2.ve
    assert checkpoint_problem(engine, engine.config(ve1.ctid)) is None  # BusyBox: CRIU can suspend it
    # A long-lived quiet program in the first VE (it must survive the suspend); a busy one in the second.
    engine.exec(ve1.ctid, "setsid sleep 100000 </dev/null >/dev/null 2>&1 &")
    sleeper = engine.exec(ve1.ctid, "pidof sleep").stdout.strip()
    assert sleeper
    engine.exec(ve2.ctid, "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &")

    assert tick()["sampled"] == 2
    Membership.objects.filter(course=course).update(activity_at=timezone.now() - timedelta(hours=1))
    time.sleep(1.5)
    counts = tick()
    assert counts["idle"] == 1
    suspend = wait_done(Task.objects.get(action="student.suspend", ve=ve1))
    assert suspend.status == "completed", suspend.error
    m1.refresh_from_db(), m2.refresh_from_db(), ve1.refresh_from_db()
    assert engine.is_suspended(ve1.ctid) and not engine.is_running(ve1.ctid)
    assert (m1.asleep, m1.asleep_how) == ("idle", "suspended")
    assert ve1.status == engine.status(ve1.ctid).status and ve1.status in ("suspended", "stopped")
    assert engine.is_running(ve2.ctid) and m2.activity_at > timezone.now() - timedelta(minutes=1)
    assert not Task.objects.filter(ve=ve2, action="student.suspend").exists()
    page = client_for(teacher).get(f"/classes/{course.pk}/").content.decode()
    assert re.search(rf'<tr id="member-{m1.pk}" data-state="suspended"', page)

    # The student opens the console: the VE comes back with its programs.
    woke = services.wake_for_console(m1.user, ve1, wait=60)
    assert woke is not None and woke.action == "student.resume" and woke.status == "completed", woke and woke.error
    assert engine.is_running(ve1.ctid) and not engine.is_suspended(ve1.ctid)
    assert engine.exec(ve1.ctid, "pidof sleep").stdout.strip() == sleeper
    m1.refresh_from_db()
    assert m1.asleep == "" and m1.console_at is not None
    assert services.wake_for_console(m1.user, ve1) is None  # awake: nothing to do

    # A lab session that is over stops the class; one about to start starts it again.
    now = timezone.now()
    LabSession.objects.create(course=course, starts_at=now - timedelta(hours=2), ends_at=now - timedelta(minutes=1),
                              started=True, after="stop")
    assert tick()["session_end"] == 2
    wait_done(Task.objects.get(action="class.session"))
    assert not engine.is_running(ve1.ctid) and not engine.is_running(ve2.ctid)
    assert set(course.students().values_list("asleep", flat=True)) == {"schedule"}
    LabSession.objects.create(course=course, starts_at=now + timedelta(minutes=3), lead_minutes=5,
                              ends_at=now + timedelta(hours=1))
    assert tick()["session_start"] == 2
    wait_for(lambda: Task.objects.filter(action="class.session", status="completed").count() == 2, 60, "the start")
    assert engine.is_running(ve1.ctid) and engine.is_running(ve2.ctid)

    # The course ends: every VE is backed up and removed, and so are the accounts made for it.
    users = [m1.user_id, m2.user_id]
    response = client_for(teacher).post(f"/classes/{course.pk}/end/", {"archive": "on", "confirm": "Idle lab"})
    assert response.status_code == 302
    ended = wait_done(Task.objects.get(action="class.end"))
    assert ended.status == "completed", ended.error
    course.refresh_from_db()
    assert course.status == "ended" and len(course.archive) == 2
    for entry in course.archive:
        assert Path(entry["backup"]).is_file()
        Path(entry["backup"]).unlink()
    assert not engine.exists(ve1.ctid) and not engine.exists(ve2.ctid)
    assert VE.objects.filter(pk__in=[ve1.pk, ve2.pk], status="destroyed").count() == 2
    assert not User.objects.filter(pk__in=users).exists()


def test_students_are_removed_one_by_one_and_the_course_closes_itself_at_its_end_date(class_agent, clean_engine,
                                                                                       teacher, node, client_for):
    engine = clean_engine
    course = services.create_course(teacher, name="Short lab", ostemplate="tiny", ssh_access=False)
    services.import_roster(teacher, course, roster_csv(3, "short").encode())
    m0, m1, m2 = course.students().select_related("user").order_by("user__username")
    other = services.create_course(teacher, name="Other lab", ostemplate="tiny")
    Membership.objects.create(course=other, user=m1.user)  # in another course too: their account stays
    assert wait_done(services.provision(teacher, course)).status == "completed"
    for m in (m0, m1, m2):
        m.refresh_from_db()
        assert engine.is_running(m.ve.ctid)
    names = [m.user.username for m in (m0, m1)]
    tc = client_for(teacher)

    # One with a backup (their account was made for the course: it goes), one without (it stays).
    assert tc.post(f"/classes/{course.pk}/students/{m0.pk}/remove/", {"archive": "on", "confirm": "on"}
                   ).status_code == 302
    removal = wait_done(Task.objects.get(action="class.remove"))
    assert removal.status == "completed", removal.error
    assert tc.post(f"/classes/{course.pk}/students/{m1.pk}/remove/", {"confirm": "on"}).status_code == 302
    removal = wait_done(Task.objects.filter(action="class.remove").latest("id"))
    assert removal.status == "completed", removal.error
    assert not engine.exists(m0.ve.ctid) and not engine.exists(m1.ve.ctid) and engine.is_running(m2.ve.ctid)
    assert VE.objects.filter(pk__in=[m0.ve_id, m1.ve_id], status="destroyed").count() == 2
    assert not User.objects.filter(pk=m0.user_id).exists()
    assert User.objects.filter(pk=m1.user_id).exists() and Membership.objects.filter(course=other, user=m1.user).exists()
    assert list(course.students().values_list("pk", flat=True)) == [m2.pk]
    course.refresh_from_db()
    backups = {a["student"]: a["backup"] for a in course.archive}
    assert set(backups) == set(names) and backups[names[1]] is None
    assert Path(backups[names[0]]).is_file()
    Path(backups[names[0]]).unlink()

    # The end date passes: the tick stops the class and closes it; nothing is removed.
    Course.objects.filter(pk=course.pk).update(ends_on=timezone.localdate() - timedelta(days=1))
    assert tick()["closed"] == 1
    stop = wait_done(Task.objects.get(action="student.stop", ve=m2.ve))
    assert stop.status == "completed", stop.error
    assert not engine.is_running(m2.ve.ctid) and engine.exists(m2.ve.ctid)
    course.refresh_from_db()
    assert course.is_closed and tick()["closed"] == 0
    student = Client()
    student.force_login(m2.user)
    assert b"This course has ended" in student.get(f"/classes/{course.pk}/").content
    assert b"This course ended on" in student.post(f"/ves/{m2.ve.ctid}/start/", follow=True).content
    assert services.wake_for_console(m2.user, m2.ve) is None
    assert not Task.objects.filter(ve=m2.ve, action__in=["start", "student.start", "student.resume"]).exists()

    # The teacher extends it: it is open again and the student starts their VE.
    assert tc.post(f"/classes/{course.pk}/extend/",
                   {"ends_on": (timezone.localdate() + timedelta(days=7)).isoformat()}).status_code == 302
    course.refresh_from_db()
    assert course.is_active
    assert student.post(f"/ves/{m2.ve.ctid}/start/").status_code == 302
    start = wait_done(Task.objects.get(ve=m2.ve, action="start"))
    assert start.status == "completed", start.error
    assert engine.is_running(m2.ve.ctid)
