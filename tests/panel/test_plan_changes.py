"""Plan changes reach existing VEs: a new plan for a user, or an edited plan, sets their VEs' limits live.

The live tests drive a real node agent and a real tiny VE of the private engine root; the others check
permissions and bad input on the panel alone (no task ever runs there).
"""

import pytest

from tests.panel.conftest import make_user, make_ve, wait_task
from vzpanel.audit.models import AuditEntry
from vzpanel.plans.models import Plan
from vzpanel.tasks.jobs import engine_limits
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

MiB = 1024 * 1024
GiB = 1024 * MiB


def user_data(user, **changes) -> dict:
    """The user edit form as the page posts it, with changes."""
    data = {"email": user.email, "first_name": user.first_name, "last_name": user.last_name, "role": user.role,
            "plan": user.plan_id or "", "teacher": user.teacher_id or "", "is_active": "on", "new_password": ""}
    data.update(changes)
    return data


def plan_data(plan, **changes) -> dict:
    """The plan form as the page posts it, with changes."""
    data = {name: getattr(plan, name) for name in
            ("name", "description", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode")}
    data.update(changes)
    return data


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def live_ve(engine, new_ctid, owner, node, plan):
    """A running tiny VE made with the owner's plan's limits, as the panel's create task makes it.

    new_ctid destroys it after the test, also when the test fails.
    """
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"plan{ctid}", **engine_limits(plan.limits()))
    engine.start(ctid, wait_boot=True)
    return VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=f"plan{ctid}", ostemplate="tiny",
                             status="running", limits=plan.limits())


def engine_limits_now(engine, ctid) -> dict:
    usage = engine.usage(ctid)
    return {"ram": usage["memory_limit_bytes"], "nproc": usage["nproc_limit"], "disk": usage["disk_limit_bytes"]}


# --- with the real agent and a real VE ------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_moving_the_owner_to_a_bigger_plan_sets_the_ves_limits_live(node_agent, engine, live_ve, client_for,
                                                                    admin, owner):
    big = Plan.objects.create(name="big", ram_mb=512, swap_mb=0, cpus=1, disk_gb=3, nproc=256, max_ves=3)
    ctid = live_ve.ctid
    assert engine_limits_now(engine, ctid) == {"ram": 256 * MiB, "nproc": 128, "disk": 2 * GiB}
    init_pid = engine.lxc.init_pid(ctid)

    response = client_for(admin).post(f"/account/users/{owner.pk}/", user_data(owner, plan=big.pk), follow=True)
    assert response.status_code == 200
    task = Task.objects.get(ve=live_ve, action="set_limits")
    page = response.content.decode()
    assert f'<a href="/tasks/{task.pk}/">task {task.pk}</a> (VE {ctid})' in page
    assert "Plan limits are being applied to 1 VE(s), live" in page

    task = wait_task(task)
    assert task.status == "completed", (task.error, task.traceback, task.log)
    assert engine_limits_now(engine, ctid) == {"ram": 512 * MiB, "nproc": 256, "disk": 3 * GiB}
    assert engine.status(ctid).status == "running" and engine.lxc.init_pid(ctid) == init_pid  # no restart
    live_ve.refresh_from_db()
    assert live_ve.limits == big.limits()
    assert AuditEntry.objects.get(action="ve.set_limits", ctid=ctid).result == "completed"

    detail = client_for(owner).get(f"/ves/{ctid}/").content.decode()
    assert "512 MB RAM, 0 MB swap, 1 CPU(s), 3 GB disk, 256 processes" in detail
    assert 'id="limits-differ"' not in detail


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_editing_a_plan_updates_its_users_ves_and_names_users_over_it(node_agent, engine, live_ve, client_for,
                                                                      admin, owner, node, plan):
    make_user("pat-plan-user", "customer", plan=plan)  # on the plan, no VEs: nothing to do for them
    being_made = make_ve(owner, node, 150, status="creating")  # the engine has not got it yet: skipped, said so
    being_made.limits = plan.limits()
    being_made.save()

    response = client_for(admin).post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=384, nproc=200, max_ves=1),
                                      follow=True)
    assert response.status_code == 200
    said = " ".join(page_messages(response))
    assert "Plan limits are being applied to 1 VE(s), live" in said
    assert "VE 150 is creating" in said
    assert "oscar-owner has 2 VEs but plan small allows 1. Nothing was destroyed" in said
    task = wait_task(Task.objects.get(ve=live_ve, action="set_limits"))
    assert task.status == "completed", (task.error, task.traceback)
    assert engine_limits_now(engine, live_ve.ctid)["ram"] == 384 * MiB
    assert engine_limits_now(engine, live_ve.ctid)["nproc"] == 200
    live_ve.refresh_from_db()
    assert live_ve.limits["ram_mb"] == 384 and live_ve.status == "running"
    assert VE.objects.live().filter(owner=owner).count() == 2  # nothing destroyed
    assert not Task.objects.filter(ve=being_made).exists()


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_disk_quota_below_usage_fails_in_words_and_keeps_the_limits(node_agent, engine, live_ve, client_for,
                                                                      admin, owner, plan):
    import subprocess

    ctid = live_ve.ctid
    fill = engine.layout.private(ctid) / "fill.bin"
    subprocess.run(["fallocate", "-l", "1200M", str(fill)], check=True)  # the VE now uses more than 1 GB
    before = engine_limits_now(engine, ctid)

    client_for(admin).post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=320, disk_gb=1))
    task = wait_task(Task.objects.get(ve=live_ve, action="set_limits"))
    assert task.status == "failed"
    assert "already uses" in task.error and "disk" in task.error
    assert "Traceback" not in task.error and not task.error_ref
    assert engine_limits_now(engine, ctid) == before  # all or nothing: the RAM did not change either
    live_ve.refresh_from_db()
    assert live_ve.limits["disk_gb"] == 2 and live_ve.limits["ram_mb"] == 256 and live_ve.status == "running"

    # The VE page says so; admins get the button, the owner only the notice.
    admin_page = client_for(admin).get(f"/ves/{ctid}/").content.decode()
    assert 'id="limits-differ"' in admin_page and "already uses" in admin_page
    assert "Apply plan limits" in admin_page
    owner_page = client_for(owner).get(f"/ves/{ctid}/").content.decode()
    assert 'id="limits-differ"' in owner_page and "Apply plan limits" not in owner_page

    # Room made: the admin applies the plan from the VE page.
    fill.unlink()
    response = client_for(admin).post(f"/ves/{ctid}/apply-plan/", follow=True)
    assert "are being applied to VE" in " ".join(page_messages(response))
    retry = wait_task(Task.objects.filter(ve=live_ve, action="set_limits").exclude(pk=task.pk).get())
    assert retry.status == "completed", retry.error
    assert engine_limits_now(engine, ctid)["disk"] == 1 * GiB
    assert engine_limits_now(engine, ctid)["ram"] == 320 * MiB
    assert 'id="limits-differ"' not in client_for(admin).get(f"/ves/{ctid}/").content.decode()


# --- permissions and bad input (no engine) ------------------------------------------------------------


def test_apply_plan_is_for_admins_and_outsiders_learn_nothing(api_for, client_for, admin, owner, outsider,
                                                               owner_ve):
    assert api_for(outsider).post("/api/ves/101/apply-plan/").status_code == 404
    assert api_for(outsider).post("/api/ves/999999/apply-plan/").status_code == 404
    response = api_for(owner).post("/api/ves/101/apply-plan/")
    assert response.status_code == 403 and "Only admins" in response.json()["detail"]
    assert client_for(outsider).post("/ves/101/apply-plan/").status_code == 404
    assert client_for(owner).post("/ves/101/apply-plan/").status_code == 404
    response = client_for(owner).post("/ves/101/set_limits/", follow=True)  # not one of the owner's actions
    assert "Unknown action" in " ".join(page_messages(response))
    # A GET applies nothing, not even an admin's (a link or a prefetch must never change limits): the admin's
    # GET is what would queue a task if the action took GETs, and the task count below says it did not.
    # An outsider's GET tells no more than a POST: the same answer for a VE that is there and one that is not.
    for who in (admin, owner):
        response = api_for(who).get("/api/ves/101/apply-plan/")
        assert response.status_code == 405 and "GET" not in response["Allow"] and "POST" in response["Allow"]
        assert client_for(who).get("/ves/101/apply-plan/").status_code == 405
    there = api_for(outsider).get("/api/ves/101/apply-plan/")
    missing = api_for(outsider).get("/api/ves/999999/apply-plan/")
    assert (there.status_code, there.content) == (missing.status_code, missing.content)
    assert not Task.objects.exists() and not AuditEntry.objects.filter(action="ve.set_limits").exists()

    response = api_for(admin).post("/api/ves/101/apply-plan/")
    assert response.status_code == 202, response.content
    task = Task.objects.get(pk=response.json()["id"])
    assert task.action == "set_limits" and task.params["limits"] == owner.plan.limits()
    assert AuditEntry.objects.get(action="ve.set_limits", ctid=101).result == "queued"


def test_a_second_change_updates_the_queued_task_and_busy_ves_are_skipped(api_for, client_for, admin, owner,
                                                                          owner_ve, student_ve, plan):
    first = api_for(admin).post("/api/ves/101/apply-plan/").json()["id"]
    client_for(admin).post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=300))
    assert list(Task.objects.filter(ve=owner_ve).values_list("pk", flat=True)) == [first]  # one task per VE
    assert Task.objects.get(pk=first).params["limits"]["ram_mb"] == 300

    Task.objects.filter(pk=first).update(status="running")  # now the agent has it: a new change must wait
    response = client_for(admin).post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=310), follow=True)
    said = " ".join(page_messages(response))
    assert "VE 101 is busy with another task" in said
    assert "VE 201" in said  # the student on the same plan: its VE is stopped, so it gets a task
    assert Task.objects.filter(ve=student_ve, action="set_limits").count() == 1
    assert Task.objects.filter(ve=owner_ve).count() == 1


def test_apply_plan_without_a_plan_is_refused_in_words(api_for, admin, owner, owner_ve):
    owner.plan = None
    owner.save()
    response = api_for(admin).post("/api/ves/101/apply-plan/")
    assert response.status_code == 400
    assert response.json()["detail"] == "VE 101 has no plan limits to apply: its owner oscar-owner has no plan."
    assert not Task.objects.exists()


def test_bad_plan_input_is_refused_and_changes_nothing(client_for, admin, owner, owner_ve, plan):
    owner_ve.limits = plan.limits()
    owner_ve.save()
    admin_client = client_for(admin)
    response = admin_client.post(f"/account/users/{owner.pk}/", user_data(owner, plan=999999))
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    owner.refresh_from_db()
    assert owner.plan == plan

    response = admin_client.post(f"/plans/{plan.pk}/", plan_data(plan, ram_mb=-512, swap_mb=-1, disk_gb=0))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert set(errors) == {"ram_mb", "swap_mb", "disk_gb"}
    assert "greater than or equal to" in errors["swap_mb"][0]
    plan.refresh_from_db()
    assert (plan.ram_mb, plan.swap_mb, plan.disk_gb) == (256, 0, 2)
    assert not Task.objects.exists()


def test_a_plan_change_to_no_plan_or_an_equal_plan_queues_nothing(client_for, admin, owner, owner_ve, plan):
    owner_ve.limits = plan.limits()
    owner_ve.save()
    same = Plan.objects.create(name="same", **plan.limits(), max_ves=5)
    response = client_for(admin).post(f"/account/users/{owner.pk}/", user_data(owner, plan=same.pk), follow=True)
    assert "1 VE(s) already had these limits." in page_messages(response)
    response = client_for(admin).post(f"/account/users/{owner.pk}/", user_data(owner, plan=""), follow=True)
    assert any("has no plan now" in m for m in page_messages(response))
    assert not Task.objects.exists()


def test_the_ve_page_shows_the_plan_difference(client_for, admin, owner, owner_ve, plan):
    page = client_for(admin).get("/ves/101/").content.decode()  # made outside the panel: no limits recorded
    assert "none set by the panel" in page and 'id="limits-differ"' in page and "Apply plan limits" in page


def test_the_schema_lists_apply_plan(api_for, admin):
    response = api_for(admin).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "post" in response.json()["paths"]["/api/ves/{ctid}/apply-plan/"]


def test_set_limits_refuses_bad_limits_and_suspended_ves_in_words(admin, owner, owner_ve, plan):
    from vzpanel.ves import services

    bad = {**plan.limits(), "ram_mb": -512}
    with pytest.raises(services.InvalidRequest, match="ram_mb must be a whole number of at least 16"):
        services.set_limits(admin, owner_ve, bad)
    with pytest.raises(services.InvalidRequest, match="Unknown limit"):
        services.set_limits(admin, owner_ve, {**plan.limits(), "iolimit": 5})
    with pytest.raises(services.Forbidden):
        services.set_limits(owner, owner_ve, plan.limits())
    VE.objects.filter(pk=owner_ve.pk).update(status="suspended")
    owner_ve.refresh_from_db()
    with pytest.raises(services.ActionRefused, match="VE 101 is suspended; its limits can be changed when it is "
                                                     "running or stopped"):
        services.apply_plan(admin, owner_ve)
    assert not Task.objects.exists()


def test_a_course_plan_governs_its_students_ves_and_their_own_plan_does_not(admin, teacher, student, student_ve,
                                                                              node, plan):
    """A student's VE in a course that has a plan follows the course's plan: an edit of the student's own plan
    leaves it alone (and queues their VE outside the course); an edit of the course's plan queues it."""
    from vzpanel.classroom.models import Course, Membership
    from vzpanel.ves import services

    lab = Plan.objects.create(name="lab", ram_mb=512, swap_mb=0, cpus=1, disk_gb=4, nproc=256, max_ves=1)
    course = Course.objects.create(name="Networks", teacher=teacher, node=node, ostemplate="tiny", plan=lab)
    Membership.objects.create(course=course, user=student, ve=student_ve)
    own = make_ve(student, node, 202, status="stopped")

    change = services.apply_plans(admin, [student], plan=plan)
    assert [(t.ve_id, t.params["limits"]) for t in change.tasks] == [(own.pk, plan.limits())]
    change = services.apply_plans(admin, [], plan=lab)
    assert [(t.ve_id, t.params["limits"]) for t in change.tasks] == [(student_ve.pk, lab.limits())]
