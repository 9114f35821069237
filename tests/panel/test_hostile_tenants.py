"""Hostile tenants: customers, resellers, students and strangers attack the resellers, billing, traffic, metrics,
dashboard and node pages by id and through side doors. Each test performs the attack through the real pages or
API and then checks the victim (its rows, its tasks, what was shown) rather than only the status code.
"""

import pytest

from tests.panel.conftest import make_user, make_ve
from vzpanel.classroom import services as classroom
from vzpanel.classroom.models import Membership
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

pytestmark = pytest.mark.django_db

LOCK = "over its monthly traffic until 2027-01-01"


# --- a lock is not lifted through the classroom --------------------------------------------------------


@pytest.fixture
def course(teacher, node, plan):
    return classroom.create_course(teacher, name="Locks 101", ostemplate="tiny", plan=plan)


@pytest.fixture
def locked_student(course, node, teacher):
    """A student whose VE is stopped and locked (its traffic is used up), as traffic/services.py leaves it."""
    user = make_user("lola@example.edu", "student", teacher=teacher)
    ve = make_ve(user, node, 351)
    VE.objects.filter(pk=ve.pk).update(status=VE.Status.STOPPED, locked=LOCK)
    return Membership.objects.create(course=course, user=user, ve=ve, display_name="Lola")


def test_a_student_cannot_reset_a_locked_ve_back_to_life(client_for, course, locked_student):
    """Reset re-creates and starts the VE: it must not be a way around the lock (the VE page's Start is refused)."""
    sc = client_for(locked_student.user)
    assert sc.post("/ves/351/start/").status_code in (302, 409)
    sc.post(f"/classes/{course.pk}/reset/{locked_student.pk}/", {"confirm": "on"})
    assert not Task.objects.filter(ve__ctid=351).exists()
    assert VE.objects.get(ctid=351).locked == LOCK


def test_a_teacher_cannot_start_or_reset_a_students_locked_ve(client_for, teacher, course, locked_student):
    tc = client_for(teacher)
    tc.post(f"/classes/{course.pk}/students/{locked_student.pk}/reset/", {"keep_work": "on"})
    with pytest.raises(classroom.ServiceError):
        classroom.class_action(teacher, course, "start")
    with pytest.raises(classroom.ServiceError):
        classroom.class_action(teacher, course, "reset")
    assert not Task.objects.filter(ve__ctid=351).exists()


def test_the_lab_schedule_does_not_start_a_locked_ve(course, locked_student):
    """The schedule (a system action, no user) starts the class: a locked VE stays down."""
    with pytest.raises(classroom.ServiceError):
        classroom.class_action(None, course, "start", why="schedule")
    assert not Task.objects.filter(ve__ctid=351).exists()


# --- a reseller's plan is its own -----------------------------------------------------------------------


@pytest.fixture
def rita(db, node):
    """Reseller Rita with a quota, a big plan of her own, and a customer."""
    from tests.panel.test_resellers import make_customer, make_plan, make_reseller

    reseller = make_reseller("rita-reseller")
    big = make_plan("rita-big", reseller, ram_mb=1024, disk_gb=10, max_ves=1)
    return {"reseller": reseller, "plan": big, "carl": make_customer("carl-of-rita", reseller, big)}


def test_a_teacher_cannot_give_a_class_a_resellers_plan(client_for, teacher, course, plan, rita):
    """A course's plan sets each student's VE limits: another owner's plan (which that reseller may change at any
    time, and counts in its quota) is not the teacher's to pick, on the new-course page nor on the edit page."""
    tc = client_for(teacher)
    page = tc.get("/classes/new/").content.decode()
    assert "rita-big" not in page
    response = tc.post("/classes/new/", {"name": "Borrowed", "image": "template:tiny", "plan": rita["plan"].pk,
                                         "ssh_access": "on", "idle_minutes": 0, "idle_action": "stop"})
    assert response.status_code != 302
    from vzpanel.classroom.models import Course

    assert not Course.objects.filter(name="Borrowed").exists()
    tc.post(f"/classes/{course.pk}/edit/", {"name": "Locks 101", "plan": rita["plan"].pk, "idle_minutes": 0,
                                            "idle_action": "stop"})
    course.refresh_from_db()
    assert course.plan_id == plan.pk


# --- a billing suspension's stop is not the owner's to cancel --------------------------------------------


def test_the_owner_cannot_cancel_the_stop_that_billing_queued_when_it_suspended_the_ve(node, plan, owner, admin,
                                                                                       api_for, client_for):
    """Billing locks the VE and queues its stop; a queued task is cancellable by whoever sees the VE, so the owner
    could cancel that stop and keep the suspended VE running. Nothing the owner does may undo the lock's stop."""
    from tests.panel.test_billing import API
    from vzpanel.billing.models import BillingService

    ve = make_ve(owner, node, 111, status="running")
    BillingService.objects.create(external_id="svc-111", customer=owner, ve=ve, plan=plan)
    r = api_for(admin).post(f"{API}/svc-111/suspend/", {"reason": "unpaid"}, format="json")
    assert r.status_code == 200, r.content
    stop = Task.objects.get(ve=ve, action="stop")
    assert stop.status == "queued" and VE.objects.get(pk=ve.pk).locked
    assert api_for(owner).post(f"/api/tasks/{stop.pk}/cancel/").status_code == 409
    client_for(owner).post(f"/tasks/{stop.pk}/cancel/")
    stop.refresh_from_db()
    assert stop.status == "queued"
    # the admin still may
    assert api_for(admin).post(f"/api/tasks/{stop.pk}/cancel/").status_code in (200, 202)



# --- defences that hold: the reseller quota on side paths, other tenants' things by id ----------------------

from tests.panel import test_resellers as tr  # noqa: E402

world = tr.world  # Rita and Rob, each with a plan, a customer and a VE; the admins' customer's VE


def test_restore_as_new_cannot_take_a_customer_beyond_its_resellers_quota(world, api_for, node):
    """Carl's plan has room for 3 VEs, Rita's quota for 1 (his VE 301): restoring his backup as a new VE through
    the API is refused by the reseller quota, and no VE row, task or address appears."""
    from django.utils import timezone

    from vzpanel.resellers.models import ResellerQuota
    from vzpanel.ves.models import Backup

    ResellerQuota.objects.filter(reseller=world["rita"]).update(max_ves=1)
    ve = world["ves"][tr.RITA_VE]
    backup = Backup.objects.create(ve=ve, node=node, ctid=ve.ctid, path="/nonexistent/b.tar.zst", size_bytes=1,
                                   data_bytes=1, created_at=timezone.now())
    before = tr.snapshot_of_rows()
    r = api_for(world["carl"]).post(f"/api/ves/{ve.ctid}/backups/{backup.pk}/restore-new/", {}, format="json")
    assert r.status_code == 403 and "reseller quota" in r.json()["detail"], r.content
    assert tr.snapshot_of_rows() == before


def test_a_reseller_cannot_restore_a_customers_backup_for_itself_or_another(world, api_for, node):
    from django.utils import timezone

    from vzpanel.ves.models import Backup

    ve = world["ves"][tr.RITA_VE]
    backup = Backup.objects.create(ve=ve, node=node, ctid=ve.ctid, path="/nonexistent/b.tar.zst", size_bytes=1,
                                   data_bytes=1, created_at=timezone.now())
    before = tr.snapshot_of_rows()
    for who in (world["rita"], world["rob"], world["cora"]):
        r = api_for(who).post(f"/api/ves/{ve.ctid}/backups/{backup.pk}/restore-new/", {}, format="json")
        assert r.status_code in (403, 404), (who, r.content)
    assert tr.snapshot_of_rows() == before


def test_a_customer_cannot_read_another_tenants_traffic_graph_customers_or_audit(world, api_for, client_for):
    """By id, in pages and the API: nothing of Cora's VE (host name, numbers) reaches Carl or Rita."""
    cora_ve = world["ves"][tr.ROB_VE]
    cora_ve.hostname = "cora-private-host"
    cora_ve.save()
    for who in (world["carl"], world["rita"]):
        api, web = api_for(who), client_for(who)
        for r in (api.get(f"/api/ves/{tr.ROB_VE}/traffic/"), web.get(f"/metrics/ves/{tr.ROB_VE}/"),
                  web.get(f"/metrics/ves/{tr.ROB_VE}/?range=month"), api.get(f"/api/customers/{world['cora'].pk}/"),
                  api.get(f"/api/resellers/{world['rob'].pk}/"), api.get("/api/audit/?q=cora")):
            assert r.status_code in (403, 404) or "cora" not in r.content.decode(), (who, r.request, r.content[:300])
            assert b"cora-private-host" not in r.content
    # Carl (a customer) sees no customers, resellers or audit at all
    assert api_for(world["carl"]).get("/api/customers/").json().get("results", []) == []


def test_a_customers_api_token_does_not_open_prometheus_and_shows_nobodys_ves(world, api_for):
    from rest_framework.test import APIClient

    from vzpanel.accounts.models import APIToken

    _, key = APIToken.issue(world["rita"], "scrape")
    for header in (f"Bearer {key}", f"Token {key}", "Bearer ", "Bearer guess-of-the-metrics-token"):
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=header)
        r = c.get("/metrics")
        assert r.status_code in (401, 403, 429), header
        assert b"vzpanel_ve_info" not in r.content and b"cora" not in r.content


def test_the_dashboard_shows_a_customer_only_its_own(world, client_for):
    cora_ve = world["ves"][tr.ROB_VE]
    cora_ve.hostname = "cora-private-host"
    cora_ve.save()
    for who in (world["carl"], world["rita"]):
        page = client_for(who).get("/").content.decode()
        assert "cora-private-host" not in page and "ve401" not in page
        assert "Nodes" not in page or "nodes/" not in page  # the admins' node panel is not there


def test_non_admins_cannot_create_or_trigger_webhooks_nor_see_a_secret(world, client_for, api_for):
    from vzpanel.billing.models import WebhookDelivery, WebhookEndpoint

    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", secret="whsec_do-not-show")
    for who in (world["rita"], world["carl"]):
        c = client_for(who)
        assert c.post("/billing/webhooks/", {"url": "http://127.0.0.1:1/", "active": "on"}).status_code == 404
        assert c.post(f"/billing/webhooks/{endpoint.pk}/test/").status_code == 404
        assert c.post(f"/billing/webhooks/{endpoint.pk}/", {"url": "http://10.0.0.1/"}).status_code == 404
        assert c.post(f"/billing/webhooks/{endpoint.pk}/delete/").status_code == 404
        assert b"whsec_do-not-show" not in c.get(f"/billing/webhooks/{endpoint.pk}/").content
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == ["http://127.0.0.1:9/hook"]
    assert not WebhookDelivery.objects.exists()
    # the admin's page after creation never shows the secret again
    admin_page = client_for(world["admin"]).get(f"/billing/webhooks/{endpoint.pk}/")
    assert admin_page.status_code == 200 and b"whsec_do-not-show" not in admin_page.content



@pytest.mark.parametrize("external_id", ["%2e%2e", "x" * 101, "caf%C3%A9", "a%20b", "a%00b", ".", "a;b", "%3Cscript%3E"])
def test_billing_refuses_odd_external_ids_and_creates_nothing(node, plan, admin, external_id):
    from tests.panel.test_billing import API, create_body
    from vzpanel.accounts.models import User
    from vzpanel.billing.models import BillingService

    c = billing_client(admin)
    r = c.post(f"{API}/{external_id}/create/", create_body(), format="json")
    assert r.status_code == 400 and "An external id is" in r.json()["detail"], r.content
    assert (User.objects.count(), BillingService.objects.count(), VE.objects.count(), Task.objects.count()) == (1, 0, 0, 0)


def test_billing_refuses_a_huge_body_and_creates_nothing(node, plan, admin):
    from tests.panel.test_billing import API, create_body
    from vzpanel.accounts.models import User
    from vzpanel.billing.models import BillingService

    c = billing_client(admin)
    r = c.post(f"{API}/big1/create/", create_body(hostname="h" * 5_000_000), format="json")
    assert r.status_code == 400 and "too large" in r.json()["detail"]  # the API's JSON shape, not an HTML page
    r = c.post(f"{API}/big2/create/", {**create_body(), "junk": ["x"] * 200_000}, format="json")
    assert r.status_code == 400 and "junk" in r.json()["errors"]
    assert (User.objects.count(), BillingService.objects.count(), VE.objects.count(), Task.objects.count()) == (1, 0, 0, 0)


def billing_client(admin):
    from rest_framework.test import APIClient

    from vzpanel.accounts.models import APIToken

    _, key = APIToken.issue(admin, "whmcs")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return c


# --- a lock holds for the changes that are not tasks ----------------------------------------------------------


def test_the_owner_cannot_change_the_reverse_dns_of_a_locked_ves_address(api_for, client_for, owner, admin, node):
    """Reverse DNS is stored at once (no task, so not through the lock check every task passes): a suspended
    customer must not re-point the PTR of the address it can no longer use; an admin still may."""
    from tests.panel.hosting_helpers import pool
    from vzpanel.nodes.models import IPAddress

    ve = make_ve(owner, node, 121, status="stopped")
    IPAddress.objects.create(pool=pool(node, "pub", "10.1.6.0/28"), address="10.1.6.2", ve=ve, reverse_dns="old.example.com")
    VE.objects.filter(pk=ve.pk).update(locked="Suspended by billing: unpaid")
    url = "/api/ves/121/network/reverse-dns/"
    r = api_for(owner).post(url, {"address": "10.1.6.2", "reverse_dns": "phish.example.net"}, format="json")
    assert r.status_code == 409 and "locked" in r.json()["detail"], r.content
    client_for(owner).post("/ves/121/network/reverse-dns/", {"address": "10.1.6.2", "reverse_dns": "phish.example.net"})
    assert IPAddress.objects.get(address="10.1.6.2").reverse_dns == "old.example.com"
    r = api_for(admin).post(url, {"address": "10.1.6.2", "reverse_dns": "ok.example.com"}, format="json")
    assert r.status_code == 200
    assert IPAddress.objects.get(address="10.1.6.2").reverse_dns == "ok.example.com"


@pytest.mark.django_db(transaction=True)
def test_two_customers_creating_at_once_cannot_both_take_the_resellers_last_ve(node, admin, owner):
    """Rita's quota has room for one more VE; her two customers create one each at the same moment, through the
    same service the pages and the API use: exactly one VE is made, the other is refused by the quota."""
    import threading

    from django.db import connection

    from vzpanel.nodes.models import Template
    from vzpanel.resellers.models import ResellerQuota
    from vzpanel.ves import services as ve_services

    Template.objects.get_or_create(node=node, name="tiny")
    rita = tr.make_reseller("rita-race", max_ves=1, ram_mb=4096)
    rplan = tr.make_plan("rita-race-plan", rita, max_ves=3)
    customers = [tr.make_customer(f"race-{i}", rita, rplan) for i in range(2)]
    barrier, results = threading.Barrier(2), {}

    def create(user):
        try:
            barrier.wait(10)
            results[user.username] = ve_services.create_ve(user, ostemplate="tiny").ve.ctid
        except ve_services.ServiceError as exc:
            results[user.username] = exc.message
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(c,)) for c in customers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    made = VE.objects.live().filter(owner__reseller=rita)
    assert made.count() == 1, results
    assert sum("reseller quota" in str(v) for v in results.values()) == 1, results
    assert ResellerQuota.objects.get(reseller=rita).max_ves == 1
