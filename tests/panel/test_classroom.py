"""Classrooms without the engine: the roster checked line by line, who may see which course and VE,
the quota, the sign-in links. (test_classroom_live.py drives real VEs through a real node agent.)"""

import pytest

from tests.panel.conftest import make_user, make_ve
from vzpanel.accounts.models import User
from vzpanel.classroom import services
from vzpanel.classroom.models import Course, LoginLink, Membership
from vzpanel.classroom.roster import parse
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

pytestmark = pytest.mark.django_db


@pytest.fixture
def course(teacher, node, plan):
    return services.create_course(teacher, name="Networks 101", ostemplate="tiny", plan=plan)


@pytest.fixture
def other_teacher(db):
    return make_user("tina-teacher", "teacher")


@pytest.fixture
def other_course(other_teacher, node):
    return services.create_course(other_teacher, name="Databases", ostemplate="tiny")


def upload(client, course, text: bytes | str, name="roster.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = text.encode() if isinstance(text, str) else text
    return client.post(f"/classes/{course.pk}/roster/", {"roster": SimpleUploadedFile(name, data)})


# --- the roster -----------------------------------------------------------------------------------

def test_it_rejects_a_bad_roster_with_line_numbers_and_creates_nothing(client_for, teacher, course, other_teacher,
                                                                       admin):
    make_user("olly-other", "student", teacher=other_teacher)
    users_before = User.objects.count()
    text = ("name,email,group\n"
            "Ada Lovelace,ada@example.edu,mon\n"          # line 2: fine
            "Alan Turing,alan@example,mon\n"              # line 3: bad address
            "Ada again,ADA@example.edu,tue\n"             # line 4: duplicate of line 2
            "Grace Hopper,grace@example.edu,mon,extra\n"  # line 5: too many fields
            "Olly,olly-other,mon\n"                       # line 6: another teacher's student
            "Alice,alice-admin,mon\n"                     # line 7: an admin
            "Bad Group,bg@example.edu,<script>\n"         # line 8: bad group
            "Edsger,edsger@example.edu,tue\n")            # line 9: fine
    response = upload(client_for(teacher), course, text)
    assert response.status_code == 400
    errors = response.context["errors"]
    assert [e.split(":")[0] for e in errors] == ["Line 3", "Line 4", "Line 5", "Line 6", "Line 7", "Line 8"]
    assert "not a valid e-mail address" in errors[0]
    assert "line 2" in errors[1]
    assert "another teacher" in errors[3] and "admin account" in errors[4]
    assert b"Nothing was imported" in response.content and b"Line 4:" in response.content
    assert User.objects.count() == users_before
    assert not Membership.objects.filter(course=course).exists()


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "The file is empty"),
    (b"\n\n  \n", "The file is empty"),
    (b"name,email,group\n", "only a header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "Line 3: this is not a CSV file"),
    (b"name,email\nJos\xe9,jose@example.edu\n", "Line 2: this is not UTF-8"),
    (b'name,email\n"Ada,ada@example.edu\n', "not valid CSV"),
    (b"Ada Lovelace\n", "Line 1: an e-mail address or a user name is missing"),
])
def test_it_says_why_a_file_is_not_a_roster(data, expected):
    roster = parse(data)
    assert not roster.ok and not roster.rows
    assert any(expected in e for e in roster.errors), roster.errors


def test_it_reads_semicolons_tabs_header_order_and_user_names():
    roster = parse(b"E-Mail;Name;Group\nada@example.edu;Ada;x\n")
    assert roster.ok and (roster.rows[0].email, roster.rows[0].name, roster.rows[0].group) == ("ada@example.edu", "Ada", "x")
    roster = parse(b"Ada\tada.l\n# a comment\nAlan\talan@example.edu\tgrp-2\n")
    assert roster.ok and [r.login for r in roster.rows] == ["ada.l", "alan@example.edu"]
    assert [r.line for r in roster.rows] == [1, 3]


def test_a_good_roster_creates_students_and_links_existing_accounts(client_for, teacher, course, student, owner):
    users_before = User.objects.count()
    text = f"Ada,ada@example.edu,mon\nSue,{student.username},tue\nAlan,alan@example.edu,tue\n"
    response = upload(client_for(teacher), course, text)
    assert response.status_code == 302, response.content
    assert User.objects.count() == users_before + 2  # Sue, the teacher's student already, is linked
    ada = User.objects.get(username="ada@example.edu")
    assert ada.role == "student" and ada.teacher == teacher and not ada.has_usable_password()
    assert ada.first_name == "Ada" and ada.email == "ada@example.edu"
    members = {m.user.username: m for m in Membership.objects.filter(course=course).select_related("user")}
    assert set(members) == {"ada@example.edu", "alan@example.edu", student.username}
    # a customer (here by e-mail) is never linked: an error on its line, nothing imported (test_tenants.py)
    response = upload(client_for(teacher), course, f"Oscar,{owner.email},\n")
    assert response.status_code == 400 and not Membership.objects.filter(user=owner).exists()
    assert members[student.username].group == "tue" and not members[student.username].created_account
    assert members["ada@example.edu"].created_account
    # The same file again changes nothing but can move a student to another group.
    response = upload(client_for(teacher), course, text.replace("Alan,alan@example.edu,tue", "Alan,alan@example.edu,mon"))
    assert response.status_code == 302
    assert User.objects.count() == users_before + 2
    assert Membership.objects.get(course=course, user__username="alan@example.edu").group == "mon"


# --- who sees what ----------------------------------------------------------------------------------

@pytest.fixture
def classes(course, other_course, teacher, other_teacher, node):
    """Two courses of two teachers, two students with a VE each in the first, one in the second."""
    a = make_user("amy@example.edu", "student", teacher=teacher)
    b = make_user("bob@example.edu", "student", teacher=teacher)
    c = make_user("cid@example.edu", "student", teacher=other_teacher)
    rows = {}
    for user, crs, ctid in ((a, course, 301), (b, course, 302), (c, other_course, 303)):
        ve = make_ve(user, node, ctid)
        rows[user.username] = Membership.objects.create(course=crs, user=user, ve=ve, ssh_port=22000 + ctid,
                                                        display_name=user.username.split("@")[0].title())
    return rows


def test_a_student_sees_only_their_own_ve_and_course(client_for, classes, course, other_course):
    amy = classes["amy@example.edu"]
    c = client_for(amy.user)
    page = c.get(f"/classes/{course.pk}/")
    assert page.status_code == 200
    assert b"/ves/301/" in page.content and b"ssh -p 22301 root@" in page.content
    assert b"/ves/302/" not in page.content and b"Bob" not in page.content and b"bob@" not in page.content
    assert c.get(f"/classes/{other_course.pk}/").status_code == 404
    assert c.get("/ves/302/").status_code == 404 and c.get("/ves/303/").status_code == 404
    listing = c.get("/classes/")
    assert course.name.encode() in listing.content and other_course.name.encode() not in listing.content
    for path in (f"/classes/{course.pk}/roster/", f"/classes/{course.pk}/edit/", f"/classes/{course.pk}/end/"):
        assert c.get(path).status_code == 404, path
    for path, data in ((f"/classes/{course.pk}/provision/", {}),
                       (f"/classes/{course.pk}/action/", {"action": "stop", "target": "all"}),
                       (f"/classes/{course.pk}/retry/{classes['bob@example.edu'].pk}/", {}),
                       (f"/classes/{course.pk}/reset/{classes['bob@example.edu'].pk}/", {"confirm": "on"}),
                       (f"/classes/{course.pk}/sheet/", {"kind": "passwords", "who": "all"})):
        assert c.post(path, data).status_code == 404, path
    assert not Task.objects.exists()
    assert services.wake_for_console(amy.user, classes["bob@example.edu"].ve) is None


def test_a_teacher_cannot_see_another_teachers_course(client_for, classes, teacher, course, other_course):
    c = client_for(teacher)
    assert c.get(f"/classes/{course.pk}/").status_code == 200
    for path in ("", "status/", "roster/", "edit/", "end/"):
        assert c.get(f"/classes/{other_course.pk}/{path}").status_code == 404, path
    for path, data in (("provision/", {}), ("action/", {"action": "reset", "target": "all"}),
                       ("image/", {"image": "template:tiny"}), ("sheet/", {"kind": "links", "who": "all"}),
                       ("extend/", {"ends_on": "2099-01-01"}), ("assistants/", {"username": "tom-teacher"})):
        assert c.post(f"/classes/{other_course.pk}/{path}", data).status_code == 404, path
    assert other_course.name.encode() not in c.get("/classes/").content
    assert c.get("/ves/303/").status_code == 404
    assert not Task.objects.exists() and not LoginLink.objects.exists()


def test_an_assistant_operates_but_does_not_manage(client_for, classes, teacher, course, other_teacher):
    helper = make_user("hal-helper", "teacher")
    services.add_assistant(teacher, course, "hal-helper")
    c = client_for(helper)
    page = c.get(f"/classes/{course.pk}/")
    assert page.status_code == 200 and b"Amy" in page.content and b"Bob" in page.content
    assert c.get(f"/classes/{course.pk}/roster/").status_code == 404
    assert c.post(f"/classes/{course.pk}/provision/").status_code == 404
    response = c.post(f"/classes/{course.pk}/action/", {"action": "stop", "target": "all"})
    assert response.status_code == 302
    assert Task.objects.filter(action="student.stop", parent__action="class.stop").count() == 2
    # and can open the VE pages (and consoles) of that course's students, not of another course
    assert c.get("/ves/301/").status_code == 200 and c.get("/ves/302/").status_code == 200
    assert c.get("/ves/303/").status_code == 404


def test_provisioning_checks_the_quota_first_and_changes_nothing(client_for, teacher, course, plan, admin):
    for i in range(3):
        Membership.objects.create(course=course, user=make_user(f"s{i}@example.edu", "student", teacher=teacher))
    services.update_course(admin, course, max_ves=2)
    response = client_for(teacher).post(f"/classes/{course.pk}/provision/", follow=True)
    assert b"may have 2 VE(s)" in response.content
    assert not VE.objects.exists() and not Task.objects.exists()
    services.update_course(admin, course, max_ves=10, max_ram_mb=plan.ram_mb * 2)
    with pytest.raises(services.QuotaExceeded, match="MB of RAM"):
        services.provision(teacher, course)
    services.update_course(teacher, course, max_ram_mb=None)  # a teacher cannot lift their own quota
    course.refresh_from_db()
    assert course.max_ram_mb == plan.ram_mb * 2 and not VE.objects.exists()


def test_a_sign_in_link_works_once(client, client_for, teacher, course):
    amy = make_user("amy@example.edu", "student", teacher=teacher)
    amy.set_unusable_password()  # as the roster makes them
    amy.save()
    Membership.objects.create(course=course, user=amy)
    sheet = client_for(teacher).post(f"/classes/{course.pk}/sheet/", {"kind": "links", "who": "new"})
    assert sheet.status_code == 200
    (_m, url), = sheet.context["rows"]
    assert url.encode() in sheet.content and LoginLink.objects.count() == 1
    assert not LoginLink.objects.filter(key_hash__in=[url]).exists()  # only a hash is stored
    path = url.split("testserver", 1)[1]
    assert client.get(path).status_code == 200  # looking does not spend it
    response = client.post(path)
    assert response.status_code == 302 and response.url == "/classes/welcome/"
    assert client.get(f"/classes/{course.pk}/").status_code == 200
    assert client.post("/classes/welcome/", {"new_password1": "Tr1cky-pass-77", "new_password2": "Tr1cky-pass-77"}
                       ).status_code == 302
    assert User.objects.get(username="amy@example.edu").check_password("Tr1cky-pass-77")
    from django.test import Client

    assert Client().post(path).status_code == 404


def test_initial_passwords_are_shown_once_and_work(client, client_for, teacher, course):
    Membership.objects.create(course=course, user=make_user("amy@example.edu", "student", teacher=teacher))
    sheet = client_for(teacher).post(f"/classes/{course.pk}/sheet/", {"kind": "passwords", "who": "all"})
    (_m, password), = sheet.context["rows"]
    assert password.encode() in sheet.content
    assert client.login(username="amy@example.edu", password=password)
    assert not Course.objects.filter(archive__icontains=password).exists()


def test_the_teachers_pages_render_and_settings_change(client_for, teacher, course, plan, classes, admin):
    c = client_for(teacher)
    for path in ("/classes/", "/classes/new/", f"/classes/{course.pk}/", f"/classes/{course.pk}/status/",
                 f"/classes/{course.pk}/edit/", f"/classes/{course.pk}/roster/", f"/classes/{course.pk}/end/"):
        assert c.get(path).status_code == 200, path
    page = c.get(f"/classes/{course.pk}/").content.decode()
    assert "Amy" in page and ("/ves/301/console/?watch=1" in page or "/ves/301/?tab=console" in page)
    response = c.post(f"/classes/{course.pk}/edit/", {"name": "Networks 102", "plan": plan.pk, "idle_minutes": 30,
                                                      "idle_action": "stop", "ssh_access": "on", "max_ves": 999})
    assert response.status_code == 302
    course.refresh_from_db()
    assert (course.name, course.idle_minutes, course.idle_action, course.max_ves) == ("Networks 102", 30, "stop", 100)
    assert c.post(f"/classes/{course.pk}/extend/", {"ends_on": "2099-01-31"}).status_code == 302
    assert c.post(f"/classes/{course.pk}/sessions/", {"starts_at": "2099-01-10T09:00", "ends_at": "2099-01-10T11:00",
                                                      "lead_minutes": 10, "after": "suspend"}).status_code == 302
    assert c.post(f"/classes/{course.pk}/assistants/", {"username": "alice-admin"}).status_code == 302
    assert c.post(f"/classes/{course.pk}/image/", {"image": "template:tiny"}).status_code == 302
    course.refresh_from_db()
    assert course.ends_on.isoformat() == "2099-01-31" and course.image_version == 1
    assert course.sessions.get().after == "suspend" and course.memberships.filter(role="assistant").count() == 1
    response = c.post(f"/classes/{course.pk}/end/", {"archive": "on", "confirm": "not the name"})
    assert response.status_code == 400 and course.status == "active"


# --- one student in, one student out ------------------------------------------------------------------

def test_only_the_teacher_and_admins_may_remove_a_student(client_for, classes, teacher, course, other_teacher,
                                                          admin):
    from vzpanel.audit.models import AuditEntry

    helper = make_user("hal-helper", "teacher")
    services.add_assistant(teacher, course, "hal-helper")
    bob = classes["bob@example.edu"]
    path = f"/classes/{course.pk}/students/{bob.pk}/remove/"
    for who in (classes["amy@example.edu"].user, bob.user, helper, other_teacher):
        c = client_for(who)
        assert c.get(path).status_code == 404, who
        assert c.post(path, {"confirm": "on", "archive": "on"}).status_code == 404, who
    assert b"Remove" not in client_for(helper).get(f"/classes/{course.pk}/").content.split(b'id="students"')[1]
    # a student of another course is not found through this one
    cid = classes["cid@example.edu"]
    assert client_for(teacher).post(f"/classes/{course.pk}/students/{cid.pk}/remove/",
                                     {"confirm": "on"}).status_code == 404
    assert Membership.objects.filter(pk__in=[bob.pk, cid.pk]).count() == 2
    assert not Task.objects.exists() and not AuditEntry.objects.filter(action__startswith="class.remove").exists()
    # the teacher sees the link and the confirmation page; without the box ticked nothing happens
    assert f'href="{path}"'.encode() in client_for(teacher).get(f"/classes/{course.pk}/").content
    page = client_for(teacher).get(path)
    assert page.status_code == 200 and b"VE 302 is backed up" in page.content
    assert client_for(admin).post(path, {"archive": "on"}).status_code == 400
    assert Membership.objects.filter(pk=bob.pk).exists() and not Task.objects.exists()


def test_removing_a_student_queues_the_archive_of_their_ve_under_a_parent(client_for, classes, teacher, course,
                                                                          django_capture_on_commit_callbacks):
    from vzpanel.audit.models import AuditEntry

    bob = classes["bob@example.edu"]
    c = client_for(teacher)
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(f"/classes/{course.pk}/students/{bob.pk}/remove/", {"confirm": "on"})
    assert response.status_code == 302
    parent = Task.objects.get(action="class.remove")
    child = parent.children.get()
    assert (child.action, child.ve.ctid, child.params["backup"], child.params["membership"]) == (
        "student.archive", 302, False, bob.pk)
    assert parent.rq_job_id and child.rq_job_id == parent.rq_job_id  # the sweeper can find their job
    entry = AuditEntry.objects.get(action="class.remove")
    assert entry.user == teacher and "bob@example.edu" in entry.detail and "without a backup" in entry.detail
    # they stay until their VE is gone (the node agent closes the parent); a second removal is refused meanwhile
    assert Membership.objects.filter(pk=bob.pk).exists()
    again = c.post(f"/classes/{course.pk}/students/{bob.pk}/remove/", {"confirm": "on"})
    assert again.status_code == 400 and b"busy" in again.content
    assert Task.objects.count() == 2


def test_a_student_without_a_ve_leaves_at_once_and_only_a_course_made_account_is_deleted(client_for, teacher,
                                                                                           course, other_course):
    made = make_user("new@example.edu", "student", teacher=teacher)
    linked = make_user("old@example.edu", "student", teacher=teacher)
    twice = make_user("two@example.edu", "student", teacher=teacher)
    rows = {u.username: Membership.objects.create(course=course, user=u, created_account=u != linked)
            for u in (made, linked, twice)}
    Membership.objects.create(course=other_course, user=twice)
    c = client_for(teacher)
    page = c.get(f"/classes/{course.pk}/students/{rows['new@example.edu'].pk}/remove/")
    assert b"is deleted" in page.content and b"no VE" in page.content
    for username in rows:
        assert c.post(f"/classes/{course.pk}/students/{rows[username].pk}/remove/", {"confirm": "on"}).status_code == 302
    assert not course.students().exists() and not Task.objects.exists()
    assert set(User.objects.filter(username__in=rows).values_list("username", flat=True)) == {
        "old@example.edu", "two@example.edu"}
    assert Membership.objects.filter(course=other_course, user=twice).exists()


def test_a_teacher_adds_one_student_by_hand_with_the_rosters_checks(client_for, teacher, course, other_teacher):
    make_user("olly-other", "student", teacher=other_teacher)
    c = client_for(teacher)
    assert b'id="add-student"' in c.get(f"/classes/{course.pk}/roster/").content
    users = User.objects.count()
    for data, problem in (({"name": "Alan", "login": "alan@example"}, b"not a valid e-mail address"),
                          ({"name": "Olly", "login": "olly-other"}, b"another teacher"),
                          ({"name": "Bad", "login": "bad@example.edu", "group": "<b>"}, b"is not valid"),
                          ({"name": "Nobody", "login": ""}, b"This field is required")):
        response = c.post(f"/classes/{course.pk}/students/add/", data)
        assert response.status_code == 400 and problem in response.content, data
        assert b"Line 2" not in response.content
    assert User.objects.count() == users and not course.memberships.exists()
    # no golden image problem here: the VE is not built because no box is ticked
    response = c.post(f"/classes/{course.pk}/students/add/", {"name": "Ada Lovelace", "login": "Ada@Example.edu",
                                                              "group": "mon"})
    assert response.status_code == 302
    m = course.students().select_related("user").get()
    assert (m.user.username, m.display_name, m.group, m.created_account) == ("ada@example.edu", "Ada Lovelace",
                                                                             "mon", True)
    assert m.user.teacher == teacher and not m.user.has_usable_password() and not Task.objects.exists()
    student = make_user("sid@example.edu", "student", teacher=teacher)
    assert client_for(student).post(f"/classes/{course.pk}/students/add/", {"login": "x@example.edu"}).status_code == 404
    # with "build their VE now" it is provisioned like the rest of the class
    response = c.post(f"/classes/{course.pk}/students/add/", {"login": "sid@example.edu", "provision": "on"})
    assert response.status_code == 302
    sid = course.students().get(user=student)
    assert not sid.created_account and Task.objects.get(action="student.provision").ve == sid.ve


# --- the end date passes ---------------------------------------------------------------------------------

def test_after_its_end_date_a_course_closes_students_cannot_start_and_the_teacher_reopens_it(
        client_for, api_for, classes, teacher, course, node, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    amy, bob = classes["amy@example.edu"], classes["bob@example.edu"]
    VE.objects.filter(pk=bob.ve_id).update(status="stopped")
    today = timezone.localdate()
    course.ends_on = today
    course.save()
    assert services.close_course(course, today=today) is None  # its last day: still on
    course.refresh_from_db()
    assert course.is_active
    with django_capture_on_commit_callbacks(execute=True):
        task = services.close_course(course, today=today + timedelta(days=1))
    course.refresh_from_db()
    assert course.status == "ending" and course.is_closed and course.closed_at is not None
    assert (task.action, task.ve.ctid, task.params["why"]) == ("student.stop", 301, "ended")  # only the running one
    task.refresh_from_db()
    assert task.rq_job_id
    assert Course.objects.get(pk=classes["cid@example.edu"].course_id).is_active  # the other course goes on
    # nothing was removed; the student is told, and cannot start the VE from any page or the API
    assert VE.objects.live().count() == 3 and course.students().count() == 2
    sc = client_for(bob.user)
    page = sc.get(f"/classes/{course.pk}/").content.decode()
    assert 'id="course-ended"' in page and "Open console" not in page and "Reset my VE" not in page
    response = sc.post("/ves/302/start/", follow=True)
    assert b"This course ended on" in response.content
    assert api_for(bob.user).post("/api/ves/302/start/").status_code == 409
    assert sc.post(f"/classes/{course.pk}/reset/{bob.pk}/", {"confirm": "on"}).status_code == 302
    assert not Task.objects.filter(ve__ctid=302).exists()
    # the teacher sees why, may still start a VE to look at it, and cannot extend to a past date
    tc = client_for(teacher)
    assert b'id="course-closed"' in tc.get(f"/classes/{course.pk}/").content
    assert tc.post("/ves/302/start/").status_code == 302 and Task.objects.filter(ve__ctid=302, action="start").exists()
    Task.objects.filter(ve__ctid=302).delete()
    response = tc.post(f"/classes/{course.pk}/extend/", {"ends_on": (today - timedelta(days=1)).isoformat()},
                       follow=True)
    assert b"To re-open the course" in response.content
    course.refresh_from_db()
    assert course.is_closed
    # extending re-opens it: the student may start their VE again
    assert tc.post(f"/classes/{course.pk}/extend/", {"ends_on": (today + timedelta(days=7)).isoformat()}
                   ).status_code == 302
    course.refresh_from_db()
    assert course.is_active and course.closed_at is None and course.ends_on == today + timedelta(days=7)
    assert sc.post("/ves/302/start/").status_code == 302 and Task.objects.filter(ve__ctid=302, action="start").exists()
    assert amy.user.pk  # amy's VE stays as the stop task leaves it


def test_a_closed_course_can_still_be_archived(client_for, classes, teacher, course):
    from datetime import timedelta

    from django.utils import timezone

    VE.objects.filter(pk__in=[m.ve_id for m in classes.values()]).update(status="stopped")
    course.ends_on = timezone.localdate() - timedelta(days=3)
    course.save()
    assert services.close_course(course) is None  # nothing ran: no stop task, but it closes
    course.refresh_from_db()
    assert course.is_closed
    response = client_for(teacher).post(f"/classes/{course.pk}/end/", {"archive": "on", "confirm": course.name})
    assert response.status_code == 302
    course.refresh_from_db()
    assert course.status == "ending" and not course.is_closed  # archiving now: extend no longer re-opens it
    assert Task.objects.get(action="class.end").children.count() == 2
    with pytest.raises(services.ActionRefused):
        services.extend_course(teacher, course, timezone.localdate() + timedelta(days=30))


# --- the read-only API ----------------------------------------------------------------------------------
def test_the_api_lists_courses_and_memberships_with_the_pages_visibility(api_for, classes, teacher, course,
                                                                         other_course, admin, outsider):
    amy, bob = classes["amy@example.edu"], classes["bob@example.edu"]
    body = api_for(teacher).get("/api/classes/").json()
    assert [c["name"] for c in body["results"]] == [course.name]
    assert body["results"][0]["students"] == 2 and body["results"][0]["state"] == "active"
    detail = api_for(teacher).get(f"/api/classes/{course.pk}/").json()
    assert {(m["username"], m["ve"], m["ve_status"]) for m in detail["memberships"]} == {
        ("amy@example.edu", 301, "running"), ("bob@example.edu", 302, "running")}
    assert {c["name"] for c in api_for(admin).get("/api/classes/").json()["results"]} == {course.name,
                                                                                           other_course.name}
    mine = api_for(amy.user).get(f"/api/classes/{course.pk}/").json()
    assert [m["username"] for m in mine["memberships"]] == ["amy@example.edu"]
    for who, pk in ((amy.user, other_course.pk), (teacher, other_course.pk), (outsider, course.pk),
                    (bob.user, 99999)):
        assert api_for(who).get(f"/api/classes/{pk}/").status_code == 404, (who, pk)
    assert api_for(outsider).get("/api/classes/").json()["results"] == []
    assert api_for(teacher).post("/api/classes/", {"name": "x"}).status_code == 405
    from rest_framework.test import APIClient

    assert APIClient().get("/api/classes/").status_code in (401, 403)
