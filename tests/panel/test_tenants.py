"""Tenant boundaries: who reaches which VE, task, course and template, written down for every pair.

Personas: an admin; two customers (each with a VE); two teachers, each with a course and one student
with a VE in it; an assistant of the first course; anonymous. The matrix tests walk every VE page, API
call and websocket of test_permissions.py for each persona against each VE, and compare the answer
with the table. The attack tests then try the ways across that were found open (issue 14): a roster
naming a customer, a course's golden image, a plan edit that skipped classroom VEs, the welcome page,
and websockets that outlived their user's access.
"""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.panel.conftest import PASSWORD, make_user, make_ve
from tests.panel.test_permissions import API_CALLS, PAGE_GETS, PAGE_POSTS
from vzpanel.accounts.models import User
from vzpanel.classroom import services as classes
from vzpanel.classroom.models import Course, LoginLink, Membership
from vzpanel.nodes.models import Node, Template
from vzpanel.plans.models import Plan
from vzpanel.tasks.models import Task
from vzpanel.ves.forms import VECreateForm
from vzpanel.ves.models import VE, Backup, Snapshot

PERSONAS = ["admin", "customer", "customer2", "teacher", "teacher2", "assistant", "student", "student2", "anonymous"]
# The VEs: each customer's own, each teacher's own (the one a golden image is frozen from), each
# teacher's student's course VE.
CUSTOMER_VE, CUSTOMER2_VE, STUDENT_VE, STUDENT2_VE, TEACHER_VE = 101, 102, 301, 303, 401
ALL_VES = [CUSTOMER_VE, CUSTOMER2_VE, STUDENT_VE, STUDENT2_VE, TEACHER_VE]
# Who sees which VE: everything else is a 404 (pages, API), a 4404 (websockets).
SEES = {
    "admin": {CUSTOMER_VE, CUSTOMER2_VE, STUDENT_VE, STUDENT2_VE, TEACHER_VE},
    "customer": {CUSTOMER_VE},
    "customer2": {CUSTOMER2_VE},
    "teacher": {STUDENT_VE, TEACHER_VE},
    "teacher2": {STUDENT2_VE},
    "assistant": {STUDENT_VE},
    "student": {STUDENT_VE},
    "student2": {STUDENT2_VE},
    "anonymous": set(),
}
# Course pages: what each persona gets for the first teacher's course (see / manage page).
COURSE_SEE = {"admin": 200, "teacher": 200, "assistant": 200, "student": 200, "customer": 404, "customer2": 404,
              "teacher2": 404, "student2": 404, "anonymous": 302}
COURSE_MANAGE = {"admin": 200, "teacher": 200, "assistant": 404, "student": 404, "customer": 404,
                 "customer2": 404, "teacher2": 404, "student2": 404, "anonymous": 302}
# Templates each persona may build from (besides the public `tiny`): the course image is the first course's.
TEMPLATES = {
    "admin": {"tiny", "COURSE", "oscar-own", "staging"},
    "customer": {"tiny", "oscar-own"},
    "customer2": {"tiny"},
    "teacher": {"tiny", "COURSE"},
    "teacher2": {"tiny"},
    "assistant": {"tiny", "COURSE"},
    "student": {"tiny", "COURSE"},
    "student2": {"tiny"},
    "anonymous": set(),
}


# localhost: a host the panel answers to by default (its origin check runs as in production)
HEADERS = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def ws_connect(user, path):
    """Open a websocket as user; return (connected, close code, first message)."""
    from vzpanel.asgi import application  # imported once the panel's test settings are in place

    async def run():
        communicator = WebsocketCommunicator(application, path, headers=HEADERS)
        communicator.scope["user"] = user
        connected, detail = await communicator.connect(timeout=5)
        message = await communicator.receive_json_from(timeout=5) if connected and "console" not in path else None
        await communicator.disconnect()
        return connected, detail, message

    return async_to_sync(run)()


@pytest.fixture
def world(node, plan):
    """Every persona and the things they own; returns (personas by name, courses, tasks by ctid)."""
    from django.contrib.auth.models import AnonymousUser

    people = {
        "admin": make_user("alice-admin", "admin"),
        "customer": make_user("oscar-owner", "customer", plan=plan),
        "customer2": make_user("olga-outsider", "customer", plan=plan),
        "teacher": make_user("tom-teacher", "teacher"),
        "teacher2": make_user("tina-teacher", "teacher"),
        "assistant": make_user("hal-helper", "teacher"),
    }
    course = classes.create_course(people["teacher"], name="Networks 101", ostemplate="tiny", plan=plan)
    course2 = classes.create_course(people["teacher2"], name="Databases", ostemplate="tiny", plan=plan)
    classes.add_assistant(people["teacher"], course, "hal-helper")
    people["student"] = make_user("amy@example.edu", "student", teacher=people["teacher"])
    people["student2"] = make_user("cid@example.edu", "student", teacher=people["teacher2"])
    ves = {
        CUSTOMER_VE: make_ve(people["customer"], node, CUSTOMER_VE),
        CUSTOMER2_VE: make_ve(people["customer2"], node, CUSTOMER2_VE),
        TEACHER_VE: make_ve(people["teacher"], node, TEACHER_VE),
    }
    for who, crs, ctid in (("student", course, STUDENT_VE), ("student2", course2, STUDENT2_VE)):
        ves[ctid] = make_ve(people[who], node, ctid, status="stopped")
        Membership.objects.create(course=crs, user=people[who], ve=ves[ctid], ssh_port=22000 + ctid)
    Snapshot.objects.create(ve=ves[CUSTOMER_VE], name="snap1", created_at=timezone.now())
    Backup.objects.create(pk=7, ve=ves[CUSTOMER_VE], node=node, ctid=CUSTOMER_VE, path="/nonexistent/b.tar.zst",
                          created_at=timezone.now())
    tasks = {ctid: Task.objects.create(ve=ve, node=node, action="start", user=ve.owner) for ctid, ve in ves.items()}
    people["anonymous"] = AnonymousUser()
    return people, (course, course2), tasks


def client_as(user):
    from django.test import Client

    c = Client()
    if user.is_authenticated:
        c.force_login(user)
    return c


def api_as(user):
    from rest_framework.test import APIClient

    from vzpanel.accounts.models import APIToken

    c = APIClient()
    if user.is_authenticated:
        _, key = APIToken.issue(user, "tests")
        c.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return c


def state():
    """Everything an action could change, to compare before and after a refused one."""
    return (list(VE.objects.order_by("ctid").values_list("ctid", "status", "hostname", "owner_id", "ostemplate")),
            list(Task.objects.order_by("id").values_list("id", "status")),
            list(Snapshot.objects.values_list("id", "name")), list(Backup.objects.values_list("id", "deleted_at")),
            list(User.objects.order_by("id").values_list("id", "password", "teacher_id")))


# --- the matrix ---------------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("persona", PERSONAS)
def test_the_tenant_matrix_of_ve_pages_api_tasks_and_websockets(world, persona):
    people, _, tasks = world
    user = people[persona]
    page, api = client_as(user), api_as(user)
    answers, expected = {}, {}
    for ctid in ALL_VES:
        sees = ctid in SEES[persona]
        for path in PAGE_GETS:
            answers[path, ctid] = page.get(path.format(ctid=ctid)).status_code
            expected[path, ctid] = 302 if persona == "anonymous" else 200 if sees else 404
        for method, path, _ in API_CALLS:
            if method == "get" and "{ctid}" in path:
                answers["api " + path, ctid] = api.get(path.format(ctid=ctid)).status_code
                expected["api " + path, ctid] = 401 if persona == "anonymous" else 200 if sees else 404
        task = tasks[ctid].pk
        answers["task page", ctid] = page.get(f"/tasks/{task}/").status_code
        expected["task page", ctid] = 302 if persona == "anonymous" else 200 if sees else 404
        answers["task api", ctid] = api.get(f"/api/tasks/{task}/").status_code
        expected["task api", ctid] = 401 if persona == "anonymous" else 200 if sees else 404
        for path in (f"/ws/ves/{ctid}/", f"/ws/tasks/{task}/"):
            connected, code, message = ws_connect(user, path)
            answers[path, ctid] = (connected, None if connected else code)
            expected[path, ctid] = (True, None) if sees else (False, 4404)
            if connected:
                assert message["snapshot"] is True
        if not sees:  # the console refuses outsiders before anything reaches a node (4401 for anonymous)
            connected, code, _ = ws_connect(user, f"/ws/ves/{ctid}/console/")
            answers["console", ctid] = (connected, code)
            expected["console", ctid] = (False, 4401 if persona == "anonymous" else 4404)
    wrong = {k: (answers[k], expected[k]) for k in answers if answers[k] != expected[k]}
    assert not wrong, f"{persona}: (got, expected) {wrong}"
    if persona != "anonymous":
        listed = {v["ctid"] for v in api.get("/api/ves/").json()["results"]}
        assert listed == SEES[persona]
        assert api.get("/api/tasks/").json()["count"] == len(SEES[persona])
        assert {t.ve.ctid for t in Task.objects.visible_to(user)} == SEES[persona]


@pytest.mark.parametrize("persona", [p for p in PERSONAS if p not in ("admin", "anonymous")])
def test_every_action_on_a_ve_a_persona_may_not_see_is_a_404_and_changes_nothing(world, persona):
    people, _, _ = world
    user = people[persona]
    page, api = client_as(user), api_as(user)
    for ctid in sorted(set(ALL_VES) - SEES[persona]):
        before = state()
        for path, data in PAGE_POSTS:
            if "{ctid}" not in path:
                continue
            data = {k: v.format(ctid=ctid) for k, v in data.items()}
            assert page.post(path.format(ctid=ctid), data).status_code == 404, (persona, ctid, path)
        for method, path, data in API_CALLS:
            if method != "get" and "{ctid}" in path:
                response = getattr(api, method)(path.format(ctid=ctid), data, format="json")
                assert response.status_code == 404, (persona, ctid, method, path)
        assert state() == before, (persona, ctid)


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_course_matrix(world, persona):
    people, (course, _), _ = world
    c = client_as(people[persona])
    assert c.get(f"/classes/{course.pk}/").status_code == COURSE_SEE[persona]
    for path in ("roster/", "edit/", "end/"):
        assert c.get(f"/classes/{course.pk}/{path}").status_code == COURSE_MANAGE[persona], path
    before = state()
    if COURSE_MANAGE[persona] != 200:
        for path, data in (("sheet/", {"kind": "passwords", "who": "all"}), ("sheet/", {"kind": "links", "who": "all"}),
                           ("image/", {"image": "template:tiny"}), ("provision/", {})):
            assert c.post(f"/classes/{course.pk}/{path}", data).status_code in (302, 404), path
            assert state() == before and not LoginLink.objects.exists(), path
    if persona != "anonymous":
        names = {x["name"] for x in api_as(people[persona]).get("/api/classes/").json()["results"]}
        assert ("Networks 101" in names) == (COURSE_SEE[persona] == 200)


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_template_matrix(world, persona):
    people, (course, _), _ = world
    node = Node.local()
    image = Template.for_course(course, course.template_name(1), description="frozen")
    Template.objects.create(node=node, name="oscar-own", owner=people["customer"], visibility="user")
    Template.objects.create(node=node, name="staging", visibility="admins")
    expected = {image.name if n == "COURSE" else n for n in TEMPLATES[persona]}
    user = people[persona]
    assert set(Template.objects.usable_by(user).values_list("name", flat=True)) == expected
    if user.is_authenticated:
        form = VECreateForm(user=user)
        assert {name for name, _ in form.fields["ostemplate"].choices} == expected


def test_the_api_lists_only_usable_templates(world):
    people, (course, _), _ = world
    image = Template.for_course(course, course.template_name(1))
    for persona in ("customer", "teacher2", "student", "teacher"):
        names = {t["name"] for t in api_as(people[persona]).get("/api/templates/").json()}
        assert (image.name in names) == (persona in ("student", "teacher")), persona


def test_the_api_schema_is_for_signed_in_users(world):
    people, _, _ = world
    assert api_as(people["anonymous"]).get("/api/schema/").status_code in (401, 403)
    assert client_as(people["anonymous"]).get("/api/schema/").status_code in (401, 403)
    response = api_as(people["customer"]).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and "/api/ves/" in response.json()["paths"]


# --- the roster attack ----------------------------------------------------------------------------------

def upload(client, course, text: str):
    return client.post(f"/classes/{course.pk}/roster/", {"roster": SimpleUploadedFile("r.csv", text.encode())})


@pytest.mark.parametrize("how", ["user name", "e-mail"])
def test_a_roster_naming_a_customer_links_nothing_and_the_customer_stays_out_of_reach(world, how):
    people, (course, _), _ = world
    teacher, victim = people["teacher"], people["customer"]
    named = victim.username if how == "user name" else victim.email.upper()
    users, members = User.objects.count(), Membership.objects.count()
    response = upload(client_as(teacher), course, f"name,email,group\nNew One,new1@example.edu,a\nOscar,{named},a\n")
    assert response.status_code == 400
    errors = response.context["errors"]
    assert len(errors) == 1 and errors[0].startswith("Line 3: ") and "not a student of yours" in errors[0]
    if how == "e-mail":
        assert victim.username not in errors[0]  # a line with an e-mail address does not learn the user name
    assert b"Nothing was imported" in response.content
    assert (User.objects.count(), Membership.objects.count()) == (users, members)  # not even the good line
    victim.refresh_from_db()
    assert victim.teacher_id is None and victim.check_password(PASSWORD)
    assert not Membership.objects.filter(user=victim).exists()
    # and so the teacher still has nothing of the customer's
    c, api = client_as(teacher), api_as(teacher)
    assert c.get(f"/ves/{CUSTOMER_VE}/").status_code == 404
    assert api.get(f"/api/ves/{CUSTOMER_VE}/").status_code == 404
    for kind in ("passwords", "links"):
        c.post(f"/classes/{course.pk}/sheet/", {"kind": kind, "who": "all"})
    victim.refresh_from_db()
    assert victim.check_password(PASSWORD) and not LoginLink.objects.filter(user=victim).exists()
    # adding the customer by hand is the same refusal
    response = c.post(f"/classes/{course.pk}/students/add/", {"name": "Oscar", "login": named})
    assert not Membership.objects.filter(user=victim).exists()


@pytest.mark.parametrize("who", ["admin", "teacher2", "assistant", "student2"])
def test_a_roster_refuses_every_account_that_is_not_the_teachers_student(world, who):
    people, (course, _), _ = world
    other = people[who]
    for ident in (other.username, other.email):
        response = upload(client_as(people["teacher"]), course, f"X,{ident},\n")
        assert response.status_code == 400, (who, ident)
        assert response.context["errors"][0].startswith("Line 1: ")
    other.refresh_from_db()
    assert not Membership.objects.filter(user=other, course=course, role="student").exists()
    assert other.check_password(PASSWORD)


def test_a_roster_still_enrols_the_teachers_own_students_and_new_accounts(world):
    people, _, _ = world
    teacher = people["teacher"]
    second = classes.create_course(teacher, name="Networks 102", ostemplate="tiny")
    made = make_user("sam", "student", teacher=teacher)  # made by the teacher's roster earlier
    text = f"Amy,{people['student'].username},\nSam,{made.email},\nNew,new2@example.edu,\n"
    response = upload(client_as(teacher), second, text)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert set(second.students().values_list("user__username", flat=True)) == {
        people["student"].username, made.username, "new2@example.edu"}


def test_leaving_the_course_ends_the_teachers_power_over_the_student(world):
    people, (course, _), _ = world
    teacher, amy = people["teacher"], people["student"]
    _, key = LoginLink.issue(amy, course=course, created_by=teacher)
    c = client_as(teacher)
    assert c.get(f"/ves/{STUDENT_VE}/").status_code == 200
    Membership.objects.filter(course=course, user=amy).delete()  # what leave_course does
    assert c.get(f"/ves/{STUDENT_VE}/").status_code == 404
    assert api_as(teacher).get(f"/api/ves/{STUDENT_VE}/").status_code == 404
    assert client_as(people["assistant"]).get(f"/ves/{STUDENT_VE}/").status_code == 404
    assert LoginLink.find(key) is None and LoginLink.redeem(key) is None  # the printed link died with it
    from django.test import Client

    assert Client().post(f"/classes/login/{key}/").status_code == 404
    with pytest.raises(ValueError, match="not a student of course"):
        LoginLink.issue(amy, course=course, created_by=teacher)
    with pytest.raises(ValueError, match="not a student of course"):
        LoginLink.issue(people["customer"], course=course, created_by=teacher)


def test_an_old_link_to_a_customer_is_ended_by_the_migration(world):
    """Rows the old roster made (a customer enrolled, its `teacher` set) are undone by classroom 0003."""
    import importlib

    from django.apps import apps

    people, (course, _), _ = world
    victim = people["customer"]
    User.objects.filter(pk=victim.pk).update(teacher=people["teacher"])
    victim_ve = VE.objects.get(ctid=CUSTOMER_VE)
    Membership.objects.create(course=course, user=victim, ve=victim_ve)
    assert client_as(people["teacher"]).get(f"/ves/{CUSTOMER_VE}/").status_code == 200  # the old hole
    assert not course.governed_students().filter(user=victim).exists()
    migration = importlib.import_module("vzpanel.classroom.migrations.0003_end_links_to_non_students")
    migration.end_links(apps, None)
    victim.refresh_from_db()
    assert victim.teacher_id is None and not Membership.objects.filter(user=victim).exists()
    assert client_as(people["teacher"]).get(f"/ves/{CUSTOMER_VE}/").status_code == 404
    assert client_as(victim).get(f"/ves/{CUSTOMER_VE}/").status_code == 200


# --- a course's golden image ------------------------------------------------------------------------------

def freeze(course, version=1):
    """Write the template row as the image job does (by name, not knowing owners)."""
    Template.objects.update_or_create(node=course.node, name=course.template_name(version),
                                      defaults={"description": f"{course.name}: golden image", "built": True})
    return Template.objects.get(node=course.node, name=course.template_name(version))


def test_a_course_image_is_the_courses_and_no_customer_can_see_or_use_it(world):
    people, (course, course2), _ = world
    image = freeze(course)
    assert (image.course, image.owner, image.visibility) == (course, people["teacher"], "course")
    customer = people["customer"]
    c = client_as(customer)
    assert image.name not in c.get("/ves/new/").content.decode()
    before = state()
    response = c.post("/ves/new/", {"ostemplate": image.name, "hostname": "thief"})
    assert response.status_code == 400
    assert f"There is no OS template {image.name} that you may use here" in response.content.decode()
    response = c.post(f"/ves/{CUSTOMER_VE}/reinstall/", {"ostemplate": image.name, "confirm": "on"})
    assert response.status_code == 400
    assert state() == before
    # the other teacher may not make it their course's image either
    response = client_as(people["teacher2"]).post(f"/classes/{course2.pk}/image/", {"image": f"template:{image.name}"})
    course2.refresh_from_db()
    assert course2.ostemplate == "tiny" and state() == before
    # an admin creating a VE for the customer cannot hand it over either
    response = client_as(people["admin"]).post("/ves/new/", {"ostemplate": image.name, "owner": customer.pk})
    assert response.status_code == 400 and "may not use the OS template" in response.content.decode()
    assert state() == before
    # the course's people may: its student can reinstall from it
    assert image.name in client_as(people["student"]).get(f"/ves/{STUDENT_VE}/").content.decode()


def test_the_api_refuses_a_course_image_to_a_customer(world):
    people, (course, _), _ = world
    image = freeze(course)
    Task.objects.all().delete()  # the customer's VE is free, so only the template can be the reason
    api = api_as(people["customer"])
    before = state()
    response = api.post("/api/ves/", {"ostemplate": image.name, "hostname": "thief"}, format="json")
    assert response.status_code in (400, 404) and image.name in response.json()["detail"]
    response = api.post(f"/api/ves/{CUSTOMER_VE}/reinstall/", {"ostemplate": image.name}, format="json")
    assert response.status_code in (400, 404)
    assert state() == before


def test_a_course_image_goes_with_its_course(world):
    people, (course, _), _ = world
    image = freeze(course)
    orphan = Template.objects.create(node=course.node, name="course99999-v1")
    assert orphan.visibility == "admins"
    for who in ("teacher", "student", "assistant"):
        assert Template.is_usable(people[who], course.node, image.name), who
    Course.objects.filter(pk=course.pk).update(status=Course.Status.ENDED)  # archived
    for who in ("teacher", "student", "assistant", "customer"):
        assert not Template.is_usable(people[who], course.node, image.name), who
    assert Template.is_usable(people["admin"], course.node, image.name)
    Course.objects.filter(pk=course.pk).update(status=Course.Status.ENDING, closed_at=timezone.now())
    assert Template.is_usable(people["student"], course.node, image.name)  # closed at its end date: kept
    Membership.objects.filter(course=course).delete()
    course.sessions.all().delete()
    Course.objects.filter(pk=course.pk).delete()
    assert not Template.objects.filter(name=image.name).exists()


# --- plans -----------------------------------------------------------------------------------------------

def plan_data(plan, **changes) -> dict:
    data = {name: getattr(plan, name) for name in
            ("name", "description", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode")}
    data.update(changes)
    return data


def test_a_plan_change_reaches_classroom_ves(world, plan):
    people, _, _ = world
    Task.objects.all().delete()  # the matrix's queued tasks would keep the VEs busy
    for ve in VE.objects.all():
        ve.limits = plan.limits()
        ve.save()
    other = Plan.objects.create(name="other", ram_mb=128, swap_mb=0, cpus=1, disk_gb=1, nproc=64, max_ves=1)
    User.objects.filter(pk=people["student"].pk).update(plan=other)  # its own plan does not govern its course VE
    response = client_as(people["admin"]).post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=384), follow=True)
    assert response.status_code == 200
    assert any("Plan limits are being applied to 4 VE(s)" in str(m) for m in response.context["messages"])
    queued = {t.ve.ctid: t.params["limits"]["ram_mb"] for t in Task.objects.filter(action="set_limits")}
    # both customers' VEs (their plan) and both students' course VEs (their courses' plan); not the teacher's
    assert queued == {CUSTOMER_VE: 384, CUSTOMER2_VE: 384, STUDENT_VE: 384, STUDENT2_VE: 384}
    # editing the student's own plan leaves their course VE alone
    Task.objects.filter(action="set_limits").delete()
    client_as(people["admin"]).post(f"/plans/{other.pk}/", plan_data(other, ram_mb=200))
    assert not Task.objects.filter(action="set_limits", ve__ctid=STUDENT_VE).exists()


def test_the_plan_form_refuses_what_no_node_can_give_and_says_what_0_means(world, plan):
    people, _, _ = world
    admin = client_as(people["admin"])
    Node.objects.update(cpus=2, ram_mb=4096)
    page = admin.get(f"/plans/{plan.pk}/").content.decode()
    assert "0: no swap" in page and "0: none" in page and "no 0 for unlimited" in page
    response = admin.post(f"/plans/{plan.pk}/", plan_data(plan, cpus=99, ram_mb=0, disk_gb=0))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "No node has 99 CPUs: the largest has 2" in errors["cpus"][0]
    assert "0 is not allowed here" in errors["ram_mb"][0] and "0 is not allowed here" in errors["disk_gb"][0]
    response = admin.post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=8192))
    assert response.status_code == 400 and "the largest has 4096 MB" in response.context["form"].errors["ram_mb"][0]
    plan.refresh_from_db()
    assert (plan.cpus, plan.ram_mb, plan.disk_gb) == (1, 256, 2)
    Node.objects.update(cpus=8)
    assert admin.post(f"/plans/{plan.pk}/", plan_data(plan, cpus=8)).status_code == 302
    plan.refresh_from_db()
    assert plan.cpus == 8
    response = admin.post("/plans/new/", plan_data(plan, name="zero", swap_mb=0, max_ves=0))
    assert response.status_code == 302 and Plan.objects.get(name="zero").max_ves == 0
    Node.objects.update(cpus=None, ram_mb=None)  # nothing reported: this machine's
    import os

    response = admin.post(f"/plans/{plan.pk}/", plan_data(plan, cpus=(os.cpu_count() or 1) + 1))
    assert response.status_code == 400


# --- the welcome page -----------------------------------------------------------------------------------

def test_the_welcome_page_needs_the_old_password_except_at_a_link_sign_in(world):
    people, (course, _), _ = world
    customer = people["customer"]
    c = client_as(customer)
    response = c.post("/classes/welcome/", {"new_password1": "Hijacked-pass-77", "new_password2": "Hijacked-pass-77"})
    assert response.status_code == 400
    customer.refresh_from_db()
    assert customer.check_password(PASSWORD)
    response = c.post("/classes/welcome/", {"old_password": PASSWORD, "new_password1": "Changed-pass-77",
                                            "new_password2": "Changed-pass-77"})
    assert response.status_code == 302
    customer.refresh_from_db()
    assert customer.check_password("Changed-pass-77")
    # a student the roster made (no password yet) signed in without a link: still needs a password
    amy = people["student"]
    amy.set_unusable_password()
    amy.save()
    response = client_as(amy).post("/classes/welcome/", {"new_password1": "Amy-pass-2024x",
                                                         "new_password2": "Amy-pass-2024x"})
    assert response.status_code == 400
    # after a login link: the first password needs no old one
    from django.test import Client

    _, key = LoginLink.issue(amy, course=course, created_by=people["teacher"])
    browser = Client()
    assert browser.post(f"/classes/login/{key}/").url == "/classes/welcome/"
    assert b"old_password" not in browser.get("/classes/welcome/").content
    response = browser.post("/classes/welcome/", {"new_password1": "Amy-pass-2024x", "new_password2": "Amy-pass-2024x"})
    assert response.status_code == 302
    amy.refresh_from_db()
    assert amy.check_password("Amy-pass-2024x")
    # and from now on she changes it with the old one
    response = browser.post("/classes/welcome/", {"new_password1": "Other-pass-2024", "new_password2": "Other-pass-2024"})
    assert response.status_code == 400


# --- websockets re-check access -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["ve", "task"])
def test_an_open_websocket_closes_when_its_user_loses_access(world, settings, kind):
    from vzpanel.asgi import application

    settings.CONSOLE_RECHECK = 0.2
    people, (course, _), tasks = world
    path = f"/ws/ves/{STUDENT_VE}/" if kind == "ve" else f"/ws/tasks/{tasks[STUDENT_VE].pk}/"

    async def run():
        from channels.db import database_sync_to_async

        communicator = WebsocketCommunicator(application, path, headers=HEADERS)
        communicator.scope["user"] = people["teacher"]
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        assert (await communicator.receive_json_from(timeout=5))["snapshot"] is True
        await asyncio.sleep(0.6)  # a few re-checks while access holds: nothing is said
        assert await communicator.receive_nothing(timeout=0.1)
        await database_sync_to_async(Membership.objects.filter(course=course, user=people["student"]).delete)()
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "gone" and "no longer have access" in message["message"]
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4404}
        await communicator.disconnect()

    import asyncio

    async_to_sync(run)()
