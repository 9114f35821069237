"""Provisioning for billing systems (/api/v1/billing/) and signed webhooks.

The live test drives a real node agent and a real tiny VE through create (sent three times), suspend,
unsuspend, change-plan and terminate, checking the engine after each; the webhook tests post to a real
HTTP server on 127.0.0.1 with a real task worker (and its scheduler, for the retries). The others check
permissions, bad input and conflicts on the panel alone, and that nothing changed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from channels.testing import WebsocketCommunicator

from tests.panel.conftest import REPO, make_ve, panel_env, stop_process, wait_for, wait_task
from vzpanel.accounts.models import APIToken, User
from vzpanel.audit.models import AuditEntry
from vzpanel.billing.models import BillingCall, BillingService, WebhookDelivery, WebhookEndpoint
from vzpanel.billing.webhooks import HEADER, new_secret, verify
from vzpanel.plans.models import Plan
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

MiB = 1024 * 1024
API = "/api/v1/billing/services"


def create_body(**changes) -> dict:
    body = {"customer": {"email": "carol@example.test", "first_name": "Carol"}, "plan": "small", "template": "tiny",
            "hostname": "carol1.example.test"}
    body.update(changes)
    return body


@pytest.fixture
def billing(admin, db):
    """The billing system's API client: an admin's full-scope token."""
    from rest_framework.test import APIClient

    _, key = APIToken.issue(admin, "whmcs")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def post(client, external_id, call, body=None):
    return client.post(f"{API}/{external_id}/{call}/", body or {}, format="json")


# --- a webhook receiver ------------------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST; it answers 500 to the first `fail` requests."""

    def __init__(self, fail: int = 0):
        self.requests: list[dict] = []
        self.fail = fail
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append({"headers": dict(self.headers), "body": body})
                code = 500 if len(owner.requests) <= owner.fail else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"receiver down")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, secret) -> list[dict]:
        """The events received so far, each signature checked against secret (a bad one fails the test)."""
        out = []
        for r in list(self.requests):
            verify(secret, r["body"], r["headers"][HEADER])
            out.append(json.loads(r["body"]))
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def endpoint_for(url, events=()) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(url=url, secret=new_secret(), events=list(events))


# --- the whole life of a service on a real node --------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_service_lives_through_every_billing_call_on_a_real_node(node_agent, engine, node, plan, billing,
                                                                   client_for, api_for, receiver):
    big = Plan.objects.create(name="big", ram_mb=384, swap_mb=0, cpus=1, disk_gb=3, nproc=200, max_ves=2)
    hook = endpoint_for(receiver.url)
    before = set(engine.ctids())

    # create, sent three times: one customer, one VE, the same answer (the password only the first time)
    first = post(billing, "whmcs-42", "create", create_body())
    assert first.status_code == 201, first.json()
    again = [post(billing, "whmcs-42", "create", create_body()) for _ in range(2)]
    answer = first.json()
    credentials = answer.pop("credentials")
    assert credentials["username"] == "carol" and len(credentials["password"]) >= 12
    for r in again:
        assert r.status_code == 201 and r.json() == answer and r["Idempotent-Replayed"] == "true"
    carol = User.objects.get(email="carol@example.test")
    assert carol.check_password(credentials["password"]) and carol.role == "customer" and carol.plan == plan
    ve = VE.objects.get(owner=carol)
    assert answer["ve"]["ctid"] == ve.ctid and answer["ve"]["hostname"] == "carol1.example.test"
    create_task = wait_task(Task.objects.get(ve=ve, action="create"))
    assert create_task.status == "completed", (create_task.error, create_task.traceback)
    assert set(engine.ctids()) - before == {ve.ctid}
    assert Task.objects.filter(action="create").count() == 1 and BillingService.objects.count() == 1
    ctid = ve.ctid
    assert engine.status(ctid).status == "running"

    # suspend: stopped on the engine, locked; the customer's start is refused by the page and the API
    r = post(billing, "whmcs-42", "suspend", {"reason": "invoice 1001 overdue"})
    assert r.status_code == 200, r.json()
    assert r.json()["status"] == "suspended" and r.json()["ve"]["locked"] == "Suspended by billing: invoice 1001 overdue"
    stop = wait_task(Task.objects.get(pk=r.json()["task"]["id"]))
    assert stop.status == "completed", stop.error
    assert engine.status(ctid).status == "stopped"
    page = client_for(carol).post(f"/ves/{ctid}/start/", follow=True).content.decode()
    assert f"VE {ctid} is locked: Suspended by billing: invoice 1001 overdue" in page
    api = api_for(carol).post(f"/api/ves/{ctid}/start/")
    assert api.status_code == 409 and "invoice 1001 overdue" in api.json()["detail"]
    assert not Task.objects.filter(ve=ve, action="start").exists()
    assert engine.status(ctid).status == "stopped"
    assert post(billing, "whmcs-42", "suspend", {"reason": "invoice 1001 overdue"}).json() == r.json()  # a retry
    refused = post(billing, "whmcs-42", "change-plan", {"plan": "big"})
    assert refused.status_code == 409 and "suspended; unsuspend it" in refused.json()["detail"]

    # unsuspend: the lock goes, the VE starts
    r = post(billing, "whmcs-42", "unsuspend")
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert wait_task(Task.objects.get(pk=r.json()["task"]["id"])).status == "completed"
    assert engine.status(ctid).status == "running"
    ve.refresh_from_db()
    assert ve.locked == ""

    # change plan: the engine's limits follow, live
    r = post(billing, "whmcs-42", "change-plan", {"plan": "big"})
    assert r.status_code == 200, r.json()
    assert wait_task(Task.objects.get(pk=r.json()["task"]["id"])).status == "completed"
    usage = engine.usage(ctid)
    assert usage["memory_limit_bytes"] == 384 * MiB and usage["nproc_limit"] == 200
    carol.refresh_from_db()
    assert carol.plan == big and BillingService.objects.get().plan == big

    # terminate: gone from the engine; a retry changes nothing
    r = post(billing, "whmcs-42", "terminate")
    assert r.status_code == 200 and r.json()["status"] == "terminated"
    assert wait_task(Task.objects.get(pk=r.json()["task"]["id"])).status == "completed"
    assert ctid not in engine.ctids()
    assert post(billing, "whmcs-42", "terminate").json() == r.json()
    assert Task.objects.filter(action="destroy").count() == 1
    late = post(billing, "whmcs-42", "suspend")
    assert late.status_code == 409 and "was terminated" in late.json()["detail"]

    # the webhooks of all that, each signed with the endpoint's secret
    def seen():
        got = [(e["type"], e["data"].get("task", {}).get("action")) for e in receiver.events(hook.secret)]
        return got if ("ve.destroyed", None) in got and ("task.succeeded", "destroy") in got else None

    got = wait_for(seen, 60, "the webhooks of the whole life")
    for expected in [("ve.created", None), ("task.succeeded", "create"), ("ve.locked", None),
                     ("ve.status_changed", None), ("ve.unlocked", None), ("task.succeeded", "set_limits")]:
        assert expected in got
    assert {a.action for a in AuditEntry.objects.filter(action__startswith="billing.")} == {
        "billing.create", "billing.suspend", "billing.unsuspend", "billing.change-plan", "billing.terminate"}


# --- who may call, and bad input (no engine: nothing may even be queued) ---------------------------------------


@pytest.mark.django_db
def test_only_an_admins_full_token_may_call_billing(node, plan, owner, admin, api_for, client_for):
    from rest_framework.test import APIClient

    _, read_key = APIToken.issue(admin, "read-only", scope="read")
    read = APIClient()
    read.credentials(HTTP_AUTHORIZATION=f"Token {read_key}")
    customer = api_for(owner)
    for call in ("create", "suspend", "unsuspend", "change-plan", "terminate"):
        r = post(customer, "whmcs-1", call, create_body())
        assert r.status_code == 403 and "admin's API token" in r.json()["detail"]
        assert post(read, "whmcs-1", call, create_body()).status_code == 403
        assert post(APIClient(), "whmcs-1", call, create_body()).status_code == 401
    assert customer.get(f"{API}/whmcs-1/").status_code == 403
    assert read.get(f"{API}/whmcs-1/").status_code == 403
    session = client_for(admin).post(f"{API}/whmcs-1/create/", create_body(), content_type="application/json")
    assert session.status_code in (401, 403)  # a signed-in admin's browser is no billing system
    assert not User.objects.filter(email="carol@example.test").exists() and not VE.objects.exists()
    assert not BillingService.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("body, field, words", [
    (create_body(plan="gold"), None, "There is no plan 'gold'"),
    (create_body(template="windows"), None, "no OS template 'windows'"),
    (create_body(hostname="-bad-.example"), None, "A host name is letters"),
    (create_body(customer={}), "customer.non_field_errors", "Name the customer by email or username"),
    (create_body(customer={"email": "not-an-address"}), "customer.email", "valid email"),
    (create_body(colour="blue"), "colour", "Unknown field"),
    (create_body(root_password="short"), "root_password", "at least 8"),
    ({"plan": "small"}, "customer", "required"),
])
def test_bad_input_is_refused_in_the_apis_shape_and_changes_nothing(node, plan, billing, body, field, words):
    users = User.objects.count()
    r = post(billing, "whmcs-7", "create", body)
    assert r.status_code == 400, r.json()
    assert words in r.json()["detail"]
    if field:
        assert field in r.json()["errors"]
    assert User.objects.count() == users and not VE.objects.exists() and not Task.objects.exists()
    assert not BillingService.objects.exists() and not BillingCall.objects.exists()


@pytest.mark.django_db
def test_existing_customers_are_found_and_other_roles_refused(node, plan, billing, owner, admin):
    r = post(billing, "whmcs-8", "create", create_body(customer={"username": admin.username}))
    assert r.status_code == 400 and "not a customer" in r.json()["detail"]
    r = post(billing, "whmcs-8", "create", create_body(customer={"email": owner.email.upper()}))
    assert r.status_code == 201, r.json()
    assert "credentials" not in r.json() and r.json()["customer"]["username"] == owner.username
    assert VE.objects.get().owner == owner
    r = post(billing, "whmcs-9", "create", create_body(customer={"username": owner.username, "email": "x@y.test"}))
    assert r.status_code == 400 and "another e-mail address" in r.json()["detail"]


@pytest.mark.django_db
def test_the_same_id_with_another_body_is_a_409_that_says_what_differs(node, plan, billing):
    Plan.objects.create(name="big", ram_mb=512)
    first = post(billing, "whmcs-5", "create", create_body(customer={"email": "carol@example.test",
                                                                      "password": "carols-own-pass"}))
    assert first.status_code == 201
    state = (User.objects.count(), VE.objects.count(), Task.objects.count(), BillingCall.objects.count())
    r = post(billing, "whmcs-5", "create", create_body(hostname="other.example.test", plan="big",
                                                       customer={"email": "carol@example.test",
                                                                 "password": "another-pass"}))
    assert r.status_code == 409
    detail, errors = r.json()["detail"], r.json()["errors"]
    assert "whmcs-5" in detail and "nothing was changed" in detail
    assert errors["hostname"] == ["was 'carol1.example.test', now 'other.example.test'"]
    assert errors["plan"] == ["was 'small', now 'big'"]
    assert errors["customer.password"] == ["differs from the first call (a secret: not shown)"]
    assert "carols-own-pass" not in r.content.decode() and "another-pass" not in r.content.decode()
    assert (User.objects.count(), VE.objects.count(), Task.objects.count(), BillingCall.objects.count()) == state
    assert VE.objects.get().hostname == "carol1.example.test"
    stored = json.dumps(BillingCall.objects.get().body)
    assert "carols-own-pass" not in stored and "hmac-sha256:" in stored  # the secret is never kept

    # a call with a request_id is keyed by it: the same id with another reason is a conflict too
    ve = VE.objects.get()
    ve.status = "stopped"
    ve.save()
    Task.objects.all().update(status="completed")
    assert post(billing, "whmcs-5", "suspend", {"reason": "late", "request_id": "inv-1"}).status_code == 200
    r = post(billing, "whmcs-5", "suspend", {"reason": "abuse", "request_id": "inv-1"})
    assert r.status_code == 409 and r.json()["errors"] == {"reason": ["was 'late', now 'abuse'"]}
    ve.refresh_from_db()
    assert ve.locked == "Suspended by billing: late"


@pytest.mark.django_db
def test_calls_on_unknown_or_unsuitable_services_are_refused(node, plan, billing):
    r = post(billing, "whmcs-404", "suspend")
    assert r.status_code == 404 and "no billing service 'whmcs-404'" in r.json()["detail"]
    assert billing.get(f"{API}/whmcs-404/").status_code == 404
    assert post(billing, "bad id!", "suspend").status_code in (400, 404)
    assert post(billing, "whmcs-6", "create", create_body()).status_code == 201
    r = post(billing, "whmcs-6", "unsuspend")
    assert r.status_code == 409 and "not suspended" in r.json()["detail"]
    r = post(billing, "whmcs-6", "suspend")  # its VE is still being created
    assert r.status_code == 409 and "busy" in r.json()["detail"]
    assert VE.objects.get().locked == ""
    r = post(billing, "whmcs-6", "change-plan", {"plan": "nope"})
    assert r.status_code == 400 and "no plan 'nope'" in r.json()["detail"]
    assert billing.get(f"{API}/whmcs-6/").json()["status"] == "active"


# --- the lock, whoever set it ------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path, body", [
    ("start/", None), ("restart/", None), ("reinstall/", {"ostemplate": "tiny"}),
    ("set-hostname/", {"hostname": "new"}), ("set-password/", {"root_password": "a-long-password"}),
    ("snapshots/", {"name": "s1"}), ("backups/", None), ("firewall/", {"policy": "drop", "rules": []}),
])
def test_the_owner_of_a_locked_ve_cannot_act_on_it_but_an_admin_can(node, owner, admin, api_for, path, body):
    ve = make_ve(owner, node, 101, status="stopped")
    ve.locked = "Over its monthly traffic (120 of 100 GB)"  # as the traffic helper sets it: the guard is generic
    ve.save()
    r = api_for(owner).post(f"/api/ves/101/{path}", body, format="json")
    assert r.status_code == 409, r.json()
    assert r.json()["detail"] == "VE 101 is locked: Over its monthly traffic (120 of 100 GB). Only an admin can unlock it."
    assert not Task.objects.exists()
    r = api_for(admin).post(f"/api/ves/101/{path}", body, format="json")
    assert r.status_code == 202, r.json()


@pytest.mark.django_db
def test_a_locked_ve_can_still_be_stopped_and_its_lock_is_not_the_owners_to_lift(node, owner, client_for, api_for):
    ve = make_ve(owner, node, 101, status="running")
    ve.locked = "Suspended by billing: non-payment"
    ve.save()
    assert api_for(owner).post("/api/ves/101/stop/").status_code == 202
    page = client_for(owner).get("/ves/101/")
    assert page.status_code == 200
    # no page or API call of the owner's touches VE.locked: a PATCH is no operation, an edit form has no such field
    assert api_for(owner).patch("/api/ves/101/", {"locked": ""}, format="json").status_code in (404, 405)
    ve.refresh_from_db()
    assert ve.locked == "Suspended by billing: non-payment"


@pytest.mark.django_db(transaction=True)
def test_the_console_of_a_locked_ve_is_refused_to_its_owner_with_the_reason(node, owner):
    from vzpanel.asgi import application

    ve = make_ve(owner, node, 101, status="running")
    ve.locked = "Suspended by billing: non-payment"
    ve.save()

    async def go():
        comm = WebsocketCommunicator(application, "/ws/ves/101/console/",
                                     headers=[(b"origin", b"http://testserver"), (b"host", b"testserver")])
        comm.scope["user"] = owner
        connected, _ = await comm.connect(timeout=5)
        assert connected
        message = json.loads((await comm.receive_output(5))["text"])
        closed = await comm.receive_output(5)
        await comm.disconnect()
        return message, closed

    message, closed = asyncio.run(go())
    assert message["type"] == "error" and "VE 101 is locked: Suspended by billing: non-payment" in message["message"]
    assert closed == {"type": "websocket.close", "code": 4404}


# --- webhooks: a real receiver, a real worker with its scheduler --------------------------------------------------


@pytest.fixture
def webhook_worker(redis_url, panel_state, test_db_path, transactional_db):
    """A task worker with RQ's scheduler (retries are scheduled jobs), retrying after 1 s, 1 s and 1 s."""
    from django.conf import settings

    log = open(panel_state / "webhook-worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "rqworker", f"node:{settings.VZPANEL_NODE}", "--with-scheduler"],
        cwd=REPO, env=panel_env(redis_url, panel_state, test_db_path, VZPANEL_WEBHOOK_RETRY_DELAYS="1,1,1"),
        stdout=log, stderr=subprocess.STDOUT)
    yield proc
    stop_process(proc, timeout=30)
    log.close()


def test_a_failing_receiver_is_retried_until_it_takes_the_event(webhook_worker, node, owner, admin, client_for):
    flaky = Receiver(fail=2)
    try:
        hook = endpoint_for(flaky.url, events=["ve.locked"])
        endpoint_for(flaky.url, events=["task.failed"])  # wants another event: gets nothing
        ve = make_ve(owner, node, 101, status="stopped")
        ve.locked = "Suspended by billing: non-payment"
        ve.save(update_fields=["locked", "updated_at"])

        delivery = WebhookDelivery.objects.get()
        assert delivery.endpoint == hook and delivery.event == "ve.locked"

        def delivered():
            delivery.refresh_from_db()
            return delivery.status == "delivered"

        wait_for(delivered, 60, "the third attempt to get through")
        assert delivery.attempts == 3 and delivery.status_code == 200
        events = flaky.events(hook.secret)  # every attempt signed (each with its own timestamp)
        assert len(events) == 3 and len({e["id"] for e in events}) == 1
        assert events[0]["type"] == "ve.locked" and events[0]["data"]["ve"]["ctid"] == 101
        assert events[0]["data"]["reason"] == "Suspended by billing: non-payment"
        assert {r["headers"]["Vzpanel-Event"] for r in flaky.requests} == {"ve.locked"}

        page = client_for(admin).get(f"/billing/webhooks/{hook.pk}/").content.decode()
        assert "delivered" in page and "ve.locked" in page and hook.secret not in page
        assert client_for(owner).get(f"/billing/webhooks/{hook.pk}/").status_code == 404
    finally:
        flaky.close()


def test_a_receiver_that_never_answers_well_fails_after_the_last_retry(webhook_worker, node, owner):
    down = Receiver(fail=100)
    try:
        hook = endpoint_for(down.url, events=["ve.status_changed"])
        ve = make_ve(owner, node, 101, status="running")
        ve.status = "stopped"
        ve.save(update_fields=["status", "updated_at"])
        delivery = WebhookDelivery.objects.get(event="ve.status_changed")

        def failed():
            delivery.refresh_from_db()
            return delivery.status == "failed"

        wait_for(failed, 60, "the delivery to give up")
        assert delivery.attempts == 4 and delivery.status_code == 500 and "receiver down" in delivery.response
        assert len(down.events(hook.secret)) == 4
        assert json.loads(delivery.body)["data"]["previous_status"] == "running"
    finally:
        down.close()


@pytest.mark.django_db
def test_admins_manage_endpoints_the_secret_is_shown_once_and_only_http_urls_are_taken(admin, owner, client_for):
    admin_client = client_for(admin)
    r = admin_client.post("/billing/webhooks/", {"url": "file:///etc/passwd", "active": "on"})
    assert r.status_code == 200 and "starts with http:// or https://" in r.content.decode()
    assert not WebhookEndpoint.objects.exists()
    r = admin_client.post("/billing/webhooks/", {"url": "https://billing.example.test/hook", "events": ["ve.locked"],
                                                 "active": "on"})
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret in r.content.decode() and endpoint.events == ["ve.locked"]
    assert endpoint.secret not in admin_client.get(f"/billing/webhooks/{endpoint.pk}/").content.decode()
    assert endpoint.secret not in admin_client.get("/billing/webhooks/").content.decode()
    for path in ("/billing/webhooks/", f"/billing/webhooks/{endpoint.pk}/"):
        assert client_for(owner).get(path).status_code == 404
    assert client_for(owner).post(f"/billing/webhooks/{endpoint.pk}/delete/").status_code == 404
    assert WebhookEndpoint.objects.exists()
    r = admin_client.post(f"/billing/webhooks/{endpoint.pk}/", {"url": "gopher://x/", "active": "on"})
    assert "starts with http:// or https://" in r.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.url == "https://billing.example.test/hook"
