"""Alerts: a VE near its memory limit, one that stopped on its own, a node that stopped answering. Each fires
once per crossing, reaches its owner by e-mail (as they chose) and a signed webhook, shows in the panel to those
who may see the VE, and resolves once. Real VEs through a real node agent; e-mail through a real SMTP server;
the webhook to a real HTTP server (tests/panel/test_billing.py's Receiver)."""

import time

import pytest
from django.utils import timezone

from tests.panel.conftest import make_user, wait_task
from tests.panel.test_billing import Receiver
from vzpanel.alerts.models import Alert, AlertPreference
from vzpanel.alerts.services import evaluate
from vzpanel.billing.models import WebhookEndpoint
from vzpanel.billing.webhooks import new_secret
from vzpanel.nodes.reconcile import reconcile_node
from vzpanel.ves import services
from vzpanel.ves.models import VE

pytestmark = pytest.mark.root


@pytest.fixture
def alice(plan):
    user = make_user("alice-alerts", "customer", plan=plan)
    user.email = "alice@example.test"
    user.save()
    return user


@pytest.fixture
def live_ve(engine, new_ctid, alice, node):
    """A running tiny VE with 128 MB of memory, owned by alice; destroyed after (by the node_agent fixture)."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"alerts{ctid}")
    engine.set(ctid, ram="128M", save=True)
    engine.start(ctid, wait_boot=True)
    return VE.objects.create(ctid=ctid, node=node, owner=alice, hostname=f"alerts{ctid}", ostemplate="tiny",
                             status="running")


class SMTPReceiver:
    """A real SMTP server on 127.0.0.1 (aiosmtpd, in a thread of its own) that keeps what it is sent."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        from tests.panel.conftest import free_port

        self.messages: list[str] = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                data = envelope.content.decode(errors="replace") if isinstance(envelope.content, bytes) \
                    else envelope.content
                box.messages.append(f"X-Rcpt: {', '.join(envelope.rcpt_tos)}\n" + data)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self):
        self.controller.stop()


@pytest.fixture
def mailbox(settings):
    """Django's SMTP backend pointed at a real SMTP server this test starts; read() = every message so far."""
    smtp = SMTPReceiver()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", smtp.port, False
    try:
        yield lambda: "".join(smtp.messages)
    finally:
        smtp.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def a_pass(node) -> dict:
    reconcile_node(node.name)
    return evaluate(node.name)


def webhook_events(receiver, secret, want: int, timeout=60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = receiver.events(secret)  # every signature checked
        if len(events) >= want:
            return events
        time.sleep(0.5)
    return receiver.events(secret)


def test_memory_near_the_limit_fires_once_tells_the_owner_and_resolves_once(
        node_agent, engine, live_ve, node, alice, outsider, mailbox, receiver, api_for, client_for):
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, secret=new_secret(),
                                              events=["alert.fired", "alert.resolved"])
    assert a_pass(node)["fired"] == 0  # an idle VE: nothing

    engine.exec(live_ve.ctid, "dd if=/dev/zero of=/run/fill bs=1M count=120 2>/dev/null; sync")
    assert a_pass(node)["fired"] >= 1
    memory = Alert.objects.get(ve=live_ve, kind="memory")
    assert memory.firing and "% of its limit" in memory.message
    assert "memory near its limit" in mailbox() and "alice@example.test" in mailbox()
    mails = mailbox().count("Subject:")

    a_pass(node)  # still over: the same alert, no second one, no second mail
    assert Alert.objects.filter(ve=live_ve, kind="memory").count() == 1 and memory.firing
    assert mailbox().count("Subject:") == mails

    engine.exec(live_ve.ctid, "rm -f /run/fill")
    a_pass(node)
    memory.refresh_from_db()
    assert not memory.firing
    assert mailbox().count("resolved: memory near its limit") == 1

    events = webhook_events(receiver, endpoint.secret, 2)
    kinds = [(e["type"], e["data"]["kind"]) for e in events if e["data"]["kind"] == "memory"]
    assert kinds == [("alert.fired", "memory"), ("alert.resolved", "memory")]

    # Shown to the owner, never to another customer (page and API).
    assert f"VE {live_ve.ctid}" in client_for(alice).get("/alerts/").content.decode()
    assert f"VE {live_ve.ctid}" not in client_for(outsider).get("/alerts/").content.decode()
    assert api_for(outsider).get("/api/alerts/").json()["results"] == []
    assert live_ve.ctid in {a["ve"] for a in api_for(alice).get("/api/alerts/").json()["results"]}


def test_a_ve_that_stops_on_its_own_fires_one_that_the_panel_stops_does_not(
        node_agent, engine, live_ve, node, alice, mailbox):
    AlertPreference.objects.create(user=alice, email=False)  # she chose not to be mailed
    a_pass(node)
    engine.exec(live_ve.ctid, "poweroff")
    deadline = time.monotonic() + 30
    while engine.is_running(live_ve.ctid) and time.monotonic() < deadline:
        time.sleep(0.2)
    a_pass(node)
    stopped = Alert.objects.get(ve=live_ve, kind="stopped")
    assert stopped.firing and mailbox() == ""

    engine.start(live_ve.ctid, wait_boot=True)
    a_pass(node)
    stopped.refresh_from_db()
    assert not stopped.firing

    wait_task(services.request_action(alice, VE.objects.get(pk=live_ve.pk), "stop"))
    a_pass(node)
    assert Alert.objects.filter(ve=live_ve, kind="stopped").count() == 1  # the panel's stop: no new alert


def test_a_node_whose_agent_stops_answering_is_an_alert_for_the_admins(node, admin, mailbox, settings):
    admin.email = "root@example.test"
    admin.save()
    node.last_seen_at = None
    node.save()
    evaluate(node.name)  # no agent runs in this test: the node is down
    down = Alert.objects.get(node=node, kind="node_down")
    assert down.firing and "root@example.test" in mailbox() and "node down" in mailbox()
    evaluate(node.name)
    assert Alert.objects.filter(node=node, kind="node_down").count() == 1


def test_an_oom_kill_inside_the_ve_fires_the_oom_alert(node_agent, engine, live_ve, node, mailbox):
    """A shell in the VE holds 300 MB in a variable (limit 128 MB): the kernel kills it, the alert fires once."""
    engine.set(live_ve.ctid, swap="0", save=True)  # no swap to spill into: past the limit is a kill
    a_pass(node)  # the baseline of the VE's counters
    engine.exec(live_ve.ctid, "a=$(yes | head -c 300000000); echo ${#a}", timeout=120)
    a_pass(node)
    oom = Alert.objects.get(ve=live_ve, kind="oom")
    assert oom.firing and "killed for lack of memory" in oom.message
    a_pass(node)  # no new kill: the alert resolves (a kill is an event, not a state)
    oom.refresh_from_db()
    assert not oom.firing and Alert.objects.filter(ve=live_ve, kind="oom").count() == 1


def test_the_badge_the_dashboard_and_the_preferences_page(node, alice, outsider, client_for, mailbox):
    """A firing alert shows in the owner's nav badge and dashboard, not the outsider's; preferences save and a
    bad kind is refused with nothing changed."""
    ve = VE.objects.create(ctid=990201, node=node, owner=alice, hostname="badge", ostemplate="tiny",
                           status="stopped")
    Alert.objects.create(kind="memory", ve=ve, message="VE 990201: memory at 95% of its limit",
                         since=timezone.now())
    page = client_for(alice).get("/alerts/").content.decode()
    assert 'title="firing">1<' in page
    assert "VE 990201" in client_for(alice).get("/").content.decode()  # the dashboard's alerts panel
    other = client_for(outsider)
    assert 'title="firing">' not in other.get("/alerts/").content.decode()
    assert "VE 990201" not in other.get("/").content.decode()

    c = client_for(alice)
    assert c.post("/alerts/preferences/", {"kinds": ["memory", "oom"]}).status_code == 302
    pref = AlertPreference.objects.get(user=alice)
    assert not pref.email and pref.kinds == ["memory", "oom"]
    r = c.post("/alerts/preferences/", {"email": "on", "kinds": ["bogus"]})
    assert r.status_code == 200 and "bogus" in r.content.decode()  # the form says which choice is wrong
    pref.refresh_from_db()
    assert not pref.email and pref.kinds == ["memory", "oom"]
