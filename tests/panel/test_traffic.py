"""Monthly traffic: metered from the engine's counters, held to the plan's quota, reset each month (UTC).

The live tests use a real tiny VE of the private engine root, the real node agent, and real traffic: TCP from a
network namespace this test makes (its own free 10.X.Y.0/24, a veth to the host) to a small Python server in
the VE's network namespace, so every byte takes the VE's own path through the host and its veth's counters.
The month's end is moved by passing ``now`` to the pass (`meter_node(node, now=...)`); nothing of the engine is
stood in for. The other tests check the panel's rules (billing locks, admins' early release, bad plan input,
who sees what) on the database alone.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import free_test_net
from tests.panel.conftest import make_user, make_ve, wait_task
from vzpanel.audit.models import AuditEntry
from vzpanel.plans.models import Plan
from vzpanel.tasks.models import Task
from vzpanel.traffic import services
from vzpanel.traffic.accounting import GB, month_of, next_month
from vzpanel.traffic.jobs import meter_node
from vzpanel.traffic.models import TrafficMeter, TrafficMonth
from vzpanel.ves.models import VE

MB = 10**6
UTC = datetime.UTC

SINK = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)

def serve(c):
    mode, n = c.recv(1), 0
    if mode in (b"u", b"U"):  # the peer uploads: count what arrives (the receiver's figure)
        while True:
            try:
                d = c.recv(1 << 16)
            except OSError:  # "U": the peer reset the connection when its time was up
                break
            if not d:
                break
            n += len(d)
        print(n, flush=True)
    else:  # the peer downloads: send until it hangs up
        buf = b"x" * (1 << 16)
        try:
            while True:
                c.sendall(buf)
        except OSError:
            pass
    c.close()

while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import socket, struct, sys, time
addr, port, mode, limit, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
c = socket.create_connection((addr, port), timeout=20)
c.sendall(mode.encode())
end, n = time.monotonic() + secs, 0
if mode in ("u", "U"):
    buf = b"x" * (1 << 16)
    c.settimeout(0.5)
    while n < limit and time.monotonic() < end:
        try:
            n += c.send(buf[: min(len(buf), limit - n)])
        except TimeoutError:
            pass
    if mode == "U":  # time is up: what is still in the buffers never reaches the VE
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    else:  # all of it: the sink closes once it has counted everything
        c.shutdown(socket.SHUT_WR)
        c.settimeout(120)
        c.recv(1)
else:
    c.settimeout(0.5)
    while n < limit and time.monotonic() < end:
        try:
            d = c.recv(1 << 16)
        except TimeoutError:
            continue
        if not d:
            break
        n += len(d)
print(n, flush=True)
"""


class Sender:
    """A network namespace of this test's own, routed to the host by a veth pair; removed at the end."""

    def __init__(self):
        self.net = free_test_net()
        tag = f"{os.getpid() % 100000}{id(self) % 97}"
        self.name, self.host_if, self.peer_if = f"vzttr{tag}", f"vztth{tag}", f"vzttp{tag}"
        self.addr = self.net.ip(2)

    def __enter__(self):
        sh = self._sh
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            sh("ip", "link", "set", self.peer_if, "netns", self.name)
            sh("ip", "addr", "add", f"{self.net.ip(1)}/24", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            ns = ("ip", "netns", "exec", self.name)
            sh(*ns, "ip", "addr", "add", f"{self.addr}/24", "dev", self.peer_if)
            sh(*ns, "ip", "link", "set", self.peer_if, "up")
            sh(*ns, "ip", "link", "set", "lo", "up")
            sh(*ns, "ip", "route", "add", "default", "via", self.net.ip(1))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    @staticmethod
    def _sh(*argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr}"

    def transfer(self, addr: str, port: int, mode: str, limit: int, secs: float) -> int:
        """Upload ("u": all of it; "U": what gets through in time) to, or download ("d") from, the sink at
        addr:port for at most limit bytes or secs seconds; return the bytes the client moved."""
        r = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", CLIENT, addr, str(port), mode,
                            str(limit), str(secs)], capture_output=True, text=True, timeout=secs + 120)
        assert r.returncode == 0, r.stderr[-2000:]
        return int(r.stdout.split()[-1])


class Sink:
    """The traffic server in a VE's network namespace (the host's Python, as the engine's fairness tests run
    iperf3): it counts what it receives and sends to whoever downloads. Stopped by pid."""

    PORT = 7100

    def __init__(self, engine, ctid):
        pid = engine.lxc.init_pid(ctid)
        assert pid, f"VE {ctid} has no init"
        self.proc = subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-u", "-c", SINK,
                                      str(self.PORT)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def received(self) -> int:
        """What the sink counted for the last upload."""
        return int(self.proc.stdout.readline())

    def stop(self):
        # The VE's network namespace must not outlive the VE because of us: before any stop or restart.
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def sender():
    with Sender() as s:
        yield s


@pytest.fixture
def quota_plan(db):
    return Plan.objects.create(name="metered", ram_mb=256, swap_mb=0, cpus=1, disk_gb=2, nproc=128, max_ves=2,
                               traffic_gb=1, traffic_over="throttle", traffic_throttle_mbit=1)


@pytest.fixture
def customer(quota_plan):
    return make_user("tara-traffic", "customer", plan=quota_plan)


@pytest.fixture
def live_ve(engine, new_ctid, customer, node):
    """A running tiny VE with an address of the test pool, owned by the metered customer; destroyed after."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"traffic{ctid}", ipadd=["auto"])
    engine.start(ctid, wait_boot=True)
    info = engine.status(ctid)
    return VE.objects.create(ctid=ctid, node=node, owner=customer, hostname=f"traffic{ctid}", ostemplate="tiny",
                             status="running", ip_addresses=list(info.ip_addresses))


@pytest.fixture
def sink(engine, live_ve):
    holder = {"sink": Sink(engine, live_ve.ctid)}
    yield holder
    holder["sink"].stop()


def push(sender, sink, ve, nbytes) -> int:
    """Upload nbytes to the VE for real; return what its sink received."""
    moved = sender.transfer(ve.ip_addresses[0], Sink.PORT, "u", nbytes, secs=600)
    got = sink.received()
    assert got == moved == nbytes, (moved, got)
    return got


def month_row(ve, now=None) -> TrafficMonth:
    return TrafficMonth.objects.get(ve=ve, month=month_of(now or datetime.datetime.now(UTC)))


def tc_rates(engine, ctid) -> tuple:
    from vzengine import tc
    from vzengine.network import ifb_name, ifname

    dev, ifb = ifname(engine.layout.tag, ctid), ifb_name(engine.layout.tag, ctid)
    return tc.egress_kbit(dev), (tc.egress_kbit(ifb) if os.path.exists(f"/sys/class/net/{ifb}") else None)


# --- with the real agent, a real VE and real traffic -------------------------------------------------------


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_ve_over_its_quota_is_throttled_both_ways_until_the_month_ends(node_agent, engine, live_ve, sink, sender,
                                                                         node, customer, client_for, api_for):
    ctid, addr = live_ve.ctid, live_ve.ip_addresses[0]
    assert meter_node(node.name)["read"] >= 1  # the starting point
    free_down = sender.transfer(addr, Sink.PORT, "d", 200 * MB, secs=1.5)
    assert free_down > 10 * MB, free_down  # unthrottled: far above what 1 Mbit/s moves in 1.5 s

    pushed = push(sender, sink["sink"], live_ve, 1050 * MB)  # over the 1 GB quota
    done = meter_node(node.name)
    assert done["throttled"] == 1, done
    row = month_row(live_ve)
    # what the veth carried: the payload, plus TCP/IP headers and the acknowledgements back (a few %)
    assert pushed <= row.bytes_in <= pushed * 1.08 + MB, (pushed, row.bytes_in)
    # out: the download above, and the acknowledgements of the upload
    assert free_down <= row.bytes_out <= free_down * 1.08 + 0.05 * pushed, (free_down, row.bytes_out)
    assert row.action == "throttle" and row.over_at is not None
    assert row.used_bytes > row.quota_bytes == GB

    # Cut for real, each way: the engine's rate on its veth (what the VE receives) and on its ifb (what it sends).
    assert tc_rates(engine, ctid) == (1000, 1000)
    assert engine.config(ctid).get("RATE") == "1000"
    down = sender.transfer(addr, Sink.PORT, "d", 50 * MB, secs=3)
    sender.transfer(addr, Sink.PORT, "U", 50 * MB, secs=3)
    up_received = sink["sink"].received()
    print(f"unthrottled download {free_down * 8 / 1.5 / 1e6:.0f} Mbit/s; throttled: down {down * 8 / 3 / 1e6:.2f}, "
          f"up {up_received * 8 / 3 / 1e6:.2f} Mbit/s")
    assert down < 1.2 * MB and up_received < 1.2 * MB, (down, up_received)  # 1 Mbit/s is 0.375 MB in 3 s

    # Said on the page and in the API; a second pass changes nothing.
    page = client_for(customer).get(f"/ves/{ctid}/").content.decode()
    assert 'id="traffic-state"' in page and "cut to 1 Mbit/s each way until" in page
    assert 'id="traffic-quota">1 GB<' in page
    body = api_for(customer).get(f"/api/ves/{ctid}/traffic/").json()
    until = next_month(month_of(datetime.datetime.now(UTC)))
    assert body["state"] == "throttled" and body["until"] == f"{until:%Y-%m-%d}" and body["quota_bytes"] == GB
    assert body["percent"] >= 100 and body["over_quota"] == "throttle" and body["throttle_mbit"] == 1
    assert meter_node(node.name)["throttled"] == 0
    assert AuditEntry.objects.filter(action="traffic.throttle", ctid=ctid).count() == 1

    # The month ends: the rate it had before (the node's default: none) comes back; a new month starts at 0.
    new_month = datetime.datetime.combine(until, datetime.time(0, 1), tzinfo=UTC)
    done = meter_node(node.name, now=new_month)
    assert done["lifted"] == 1, done
    assert tc_rates(engine, ctid) == (None, None) and engine.config(ctid).get("RATE") == ""
    assert sender.transfer(addr, Sink.PORT, "d", 200 * MB, secs=1.5) > 10 * MB
    fresh = TrafficMonth.objects.get(ve=live_ve, month=until)
    assert fresh.used_bytes < 5 * MB and fresh.action == ""
    body = services.summary(live_ve, now=new_month)
    assert body["state"] == "normal" and body["months"][0]["month"] == month_of(datetime.datetime.now(UTC))
    assert body["months"][0]["action"] == "throttle"
    assert AuditEntry.objects.filter(action="traffic.lift", ctid=ctid).count() == 1


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_ve_over_a_suspend_quota_is_stopped_and_locked_then_let_go_at_the_new_month(
        node_agent, engine, live_ve, sink, sender, node, customer, quota_plan, api_for):
    quota_plan.traffic_over = "suspend"
    quota_plan.save()
    ctid = live_ve.ctid
    meter_node(node.name)
    push(sender, sink["sink"], live_ve, 1050 * MB)
    sink["sink"].stop()  # before the VE stops: our server must not hold its network namespace

    done = meter_node(node.name)
    assert done["locked"] == 1 and done["stops"] == 1, done
    live_ve.refresh_from_db()
    until = next_month(month_of(datetime.datetime.now(UTC)))
    assert live_ve.locked == f"over its monthly traffic until {until:%Y-%m-%d}"
    stop = wait_task(Task.objects.get(ve=live_ve, action="stop"))
    assert stop.status == "completed" and stop.user is None, (stop.error, stop.traceback)
    assert engine.status(ctid).status == "stopped"
    live_ve.refresh_from_db()
    assert live_ve.status == "stopped"
    # Its owner cannot start it (the generic guard for locked VEs, vzpanel/ves/services.py).
    refused = api_for(customer).post(f"/api/ves/{ctid}/start/", {}, format="json")
    assert refused.status_code == 409 and "locked" in refused.json()["detail"], refused.content
    assert api_for(customer).get(f"/api/ves/{ctid}/traffic/").json()["state"] == "locked"

    # The new month: unlocked and started again, as it was running when it was stopped.
    done = meter_node(node.name, now=datetime.datetime.combine(until, datetime.time(0, 1), tzinfo=UTC))
    assert done["lifted"] == 1, done
    live_ve.refresh_from_db()
    assert live_ve.locked == ""
    start = wait_task(Task.objects.get(ve=live_ve, action="start"))
    assert start.status == "completed", (start.error, start.traceback)
    assert engine.status(ctid).status == "running"


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_restart_between_readings_neither_loses_nor_double_counts(node_agent, engine, live_ve, sink, sender,
                                                                     node, quota_plan):
    quota_plan.traffic_gb = 0  # unlimited: only the counting is looked at here
    quota_plan.save()
    ctid = live_ve.ctid
    meter_node(node.name)
    start = month_row(live_ve).used_bytes
    pushed = push(sender, sink["sink"], live_ve, 100 * MB)
    meter_node(node.name)
    pushed += push(sender, sink["sink"], live_ve, 60 * MB)  # after the reading, before the restart: its run's tail
    sink["sink"].stop()
    run_before = TrafficMeter.objects.get(ve=live_ve).run
    engine.restart(ctid, wait_boot=True)  # the veth's counters start again at zero
    sink["sink"] = Sink(engine, ctid)
    pushed += push(sender, sink["sink"], live_ve, 40 * MB)
    meter_node(node.name)
    meter = TrafficMeter.objects.get(ve=live_ve)
    assert meter.run and meter.run != run_before  # a new run of its network was seen
    used = month_row(live_ve).used_bytes - start
    assert pushed <= used <= pushed * 1.08 + MB, (pushed, used)
    assert meter_node(node.name)["read"] >= 1
    again = month_row(live_ve).used_bytes - start
    assert used <= again <= used + MB  # nothing counted twice (only a few packets since)

    # Stopped and started again without a reading in between, then stopped at a reading: still exact.
    sink["sink"].stop()
    engine.stop(ctid, fast=True)
    meter_node(node.name)
    assert TrafficMeter.objects.get(ve=live_ve).run == ""
    engine.start(ctid, wait_boot=True)
    sink["sink"] = Sink(engine, ctid)
    pushed += push(sender, sink["sink"], live_ve, 30 * MB)
    meter_node(node.name)
    used = month_row(live_ve).used_bytes - start
    assert pushed <= used <= pushed * 1.08 + 2 * MB, (pushed, used)


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_one_agent_call_reads_every_ve_of_the_node(root_agent, engine, live_ve, node):
    from vzpanel.tasks.jobs import engine as remote

    report = remote(node.name).call("traffic_counters")
    assert set(report) == {str(c) for c in engine.ctids()}
    mine = report[str(live_ve.ctid)]
    assert set(mine) == {"in", "out", "run", "run_in", "run_out"} and mine["run"]
    assert mine["in"] >= mine["run_in"] >= 0 and mine["out"] >= mine["run_out"] >= 0


# --- the panel's rules, on the database alone ------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 20, 12, 0, tzinfo=UTC)
JANUARY = datetime.datetime(2027, 1, 1, 0, 5, tzinfo=UTC)


def report(ve, total_in, run="boot-1-7", run_in=None) -> dict:
    return {str(ve.ctid): {"in": total_in, "out": 0, "run": run, "run_in": total_in if run_in is None else run_in,
                           "run_out": 0}}


@pytest.fixture
def stopped_ve(customer, node, quota_plan):
    quota_plan.traffic_over = "suspend"
    quota_plan.save()
    ve = make_ve(customer, node, 321, status="stopped")
    VE.objects.filter(pk=ve.pk).update(created_at=NOW - datetime.timedelta(days=60))
    ve.refresh_from_db()
    return ve


def test_a_billing_lock_is_never_lifted_by_the_new_month(stopped_ve, node):
    services.meter(node, None, report(stopped_ve, 0), NOW)
    done = services.meter(node, None, report(stopped_ve, 2 * GB), NOW)
    assert done.locked == 1 and done.stops == 0  # stopped already: nothing to stop
    stopped_ve.refresh_from_db()
    assert stopped_ve.locked == "over its monthly traffic until 2027-01-01"
    VE.objects.filter(pk=stopped_ve.pk).update(locked="unpaid invoice 2026-12")  # billing locks it meanwhile
    services.meter(node, None, report(stopped_ve, 2 * GB), JANUARY)
    stopped_ve.refresh_from_db()
    assert stopped_ve.locked == "unpaid invoice 2026-12"
    assert not Task.objects.filter(ve=stopped_ve).exists()  # and not started


def test_a_ve_locked_for_billing_keeps_that_lock_when_it_goes_over(stopped_ve, node):
    VE.objects.filter(pk=stopped_ve.pk).update(locked="unpaid invoice 2026-12")
    stopped_ve.refresh_from_db()
    services.meter(node, None, report(stopped_ve, 0), NOW)
    services.meter(node, None, report(stopped_ve, 2 * GB), NOW)
    stopped_ve.refresh_from_db()
    assert stopped_ve.locked == "unpaid invoice 2026-12"
    services.meter(node, None, report(stopped_ve, 2 * GB), JANUARY)
    stopped_ve.refresh_from_db()
    assert stopped_ve.locked == "unpaid invoice 2026-12"


def test_a_ve_an_admin_unlocked_is_not_locked_again_that_month(stopped_ve, node):
    services.meter(node, None, report(stopped_ve, 0), NOW)
    services.meter(node, None, report(stopped_ve, 2 * GB), NOW)
    VE.objects.filter(pk=stopped_ve.pk).update(locked="")  # an admin let it go
    done = services.meter(node, None, report(stopped_ve, 3 * GB), NOW + datetime.timedelta(hours=1))
    stopped_ve.refresh_from_db()
    assert stopped_ve.locked == "" and done.locked == 0
    assert month_row(stopped_ve, NOW).used_bytes == 3 * GB


def test_a_bigger_quota_lets_a_ve_go_within_the_month(stopped_ve, node, quota_plan):
    services.meter(node, None, report(stopped_ve, 0), NOW)
    services.meter(node, None, report(stopped_ve, 2 * GB), NOW)
    quota_plan.traffic_gb = 5
    quota_plan.save()
    done = services.meter(node, None, report(stopped_ve, 2 * GB), NOW)
    stopped_ve.refresh_from_db()
    assert done.lifted == 1 and stopped_ve.locked == ""
    assert month_row(stopped_ve, NOW).quota_bytes == 5 * GB


def test_no_quota_means_no_limit_and_a_first_reading_of_an_old_ve_is_only_a_start(stopped_ve, node, quota_plan):
    quota_plan.traffic_gb = 0
    quota_plan.save()
    services.meter(node, None, report(stopped_ve, 900 * GB), NOW)  # its history before metering began
    assert month_row(stopped_ve, NOW).used_bytes == 0
    done = services.meter(node, None, report(stopped_ve, 1000 * GB), NOW)
    assert done.locked == done.throttled == 0 and month_row(stopped_ve, NOW).used_bytes == 100 * GB


def test_a_reading_across_the_months_end_is_shared_between_the_months(stopped_ve, node, quota_plan):
    quota_plan.traffic_gb = 0
    quota_plan.save()
    services.meter(node, None, report(stopped_ve, 0), datetime.datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    services.meter(node, None, report(stopped_ve, 1000), datetime.datetime(2027, 1, 1, 1, 0, tzinfo=UTC))
    assert TrafficMonth.objects.get(ve=stopped_ve, month=datetime.date(2026, 12, 1)).bytes_in == 500
    assert TrafficMonth.objects.get(ve=stopped_ve, month=datetime.date(2027, 1, 1)).bytes_in == 500


def test_counters_that_are_not_numbers_are_ignored(stopped_ve, node):
    done = services.meter(node, None, {str(stopped_ve.ctid): {"in": "lots"}, "x": 5}, NOW)
    assert done.read == 0 and not TrafficMonth.objects.exists()


def test_the_plan_form_shows_the_traffic_fields_and_refuses_bad_ones_in_words(client_for, admin, quota_plan):
    c = client_for(admin)
    page = c.get(f"/plans/{quota_plan.pk}/").content.decode()
    for name in ("traffic_gb", "traffic_over", "traffic_throttle_mbit"):
        assert f'name="{name}"' in page, name
    base = {name: getattr(quota_plan, name) for name in (
        "name", "description", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode")}
    bad = [
        ({"traffic_gb": "-5"}, "The monthly traffic cannot be negative"),
        ({"traffic_gb": "lots"}, "Give the monthly traffic as a whole number of GB"),
        ({"traffic_gb": "99999999999"}, "At most 10,000,000 GB a month"),
        ({"traffic_over": "delete"}, "Choose what happens over the quota: throttle"),
        ({"traffic_throttle_mbit": "0"}, "The throttle rate is at least 1 Mbit/s"),
        ({"traffic_throttle_mbit": "-1"}, "The throttle rate is at least 1 Mbit/s"),
        ({"traffic_throttle_mbit": "200000"}, "The throttle rate is at most 100,000 Mbit/s"),
    ]
    for change, message in bad:
        response = c.post(f"/plans/{quota_plan.pk}/", {**base, **change})
        assert response.status_code == 400, change
        assert message in response.content.decode(), (change, response.content.decode()[-3000:])
        quota_plan.refresh_from_db()
        assert (quota_plan.traffic_gb, quota_plan.traffic_over, quota_plan.traffic_throttle_mbit) == (1, "throttle", 1)
    # Good values are saved; a post without them keeps what the plan has.
    response = c.post(f"/plans/{quota_plan.pk}/", {**base, "traffic_gb": "250", "traffic_over": "suspend",
                                                   "traffic_throttle_mbit": "10"})
    assert response.status_code == 302
    quota_plan.refresh_from_db()
    assert (quota_plan.traffic_gb, quota_plan.traffic_over, quota_plan.traffic_throttle_mbit) == (250, "suspend", 10)
    assert c.post(f"/plans/{quota_plan.pk}/", base).status_code == 302
    quota_plan.refresh_from_db()
    assert (quota_plan.traffic_gb, quota_plan.traffic_over, quota_plan.traffic_throttle_mbit) == (250, "suspend", 10)


def test_the_owner_sees_the_months_and_an_outsider_gets_nothing(stopped_ve, node, customer, outsider, admin,
                                                                client_for, api_for):
    services.meter(node, None, report(stopped_ve, 0), NOW)
    services.meter(node, None, report(stopped_ve, 300 * MB), NOW)
    TrafficMonth.objects.create(ve=stopped_ve, month=datetime.date(2026, 11, 1), bytes_in=7 * GB, bytes_out=GB,
                                quota_bytes=GB, action="suspend")
    ctid = stopped_ve.ctid
    body = api_for(customer).get(f"/api/ves/{ctid}/traffic/").json()
    this = month_of(datetime.datetime.now(UTC))
    assert body["month"] == f"{this:%Y-%m}" and body["quota_bytes"] == GB and body["state"] == "normal"
    if this == month_of(NOW):  # (these rows were written for December 2026)
        assert body["used_bytes"] == 300 * MB and body["percent"] == 30
        assert body["months"] == [{"month": "2026-11", "bytes_in": 7 * GB, "bytes_out": GB, "used_bytes": 8 * GB,
                                   "quota_bytes": GB, "action": "suspend"}]
        page = client_for(customer).get(f"/ves/{ctid}/").content.decode()
        assert 'id="traffic-used">300 MB<' in page and 'id="traffic-quota">1 GB<' in page and "(30%)" in page
        assert "2026-11" in page and "8 GB" in page
    assert api_for(admin).get(f"/api/ves/{ctid}/traffic/").status_code == 200
    for path in (f"/api/ves/{ctid}/traffic/", "/api/ves/99999/traffic/"):
        response = api_for(outsider).get(path)
        assert response.status_code == 404 and "7" not in str(response.json().get("detail", "")), path
    assert client_for(outsider).get(f"/ves/{ctid}/").status_code == 404


def test_a_pass_stays_cheap_for_a_thousand_ves(customer, node, quota_plan, django_assert_max_num_queries):
    ves = VE.objects.bulk_create([VE(ctid=10_000 + i, node=node, owner=customer, hostname=f"b{i}", ostemplate="tiny",
                                     status="stopped") for i in range(1000)])
    counters = {str(ve.ctid): {"in": 0, "out": 0, "run": "", "run_in": 0, "run_out": 0} for ve in ves}
    services.meter(node, None, counters, NOW)
    counters = {k: {**v, "in": 5 * MB} for k, v in counters.items()}
    started = time.monotonic()
    with django_assert_max_num_queries(20):
        done = services.meter(node, None, counters, NOW + datetime.timedelta(minutes=1))
    took = time.monotonic() - started
    print(f"one pass over 1000 VEs: {took * 1000:.0f} ms")
    assert done.read == 1000
    assert TrafficMonth.objects.filter(month=month_of(NOW), bytes_in=5 * MB).count() == 1000
