"""A VE's root attacks its own traffic meter from inside: the bytes it moved must still count.

Real agent, real tiny VE with an address, real traffic from a network namespace this test makes (the sender and
sink of test_traffic.py). The attacks run inside the VE as its root (lxc-attach, as `vzctl exec` does).
"""

import os
import subprocess
import time

import pytest

from tests.panel import test_traffic as tt
from vzengine.network import ifname
from vzpanel.traffic.jobs import meter_node

MB, Sink, month_row, push, tc_rates = tt.MB, tt.Sink, tt.month_row, tt.push, tt.tc_rates
# test_traffic.py's fixtures: a metered customer's running tiny VE, the sink in it, the sender namespace
quota_plan, customer, live_ve, sink, sender = tt.quota_plan, tt.customer, tt.live_ve, tt.sink, tt.sender

pytestmark = [pytest.mark.root, pytest.mark.django_db(transaction=True)]


def inside(engine, ctid, line: str) -> str:
    r = engine.exec(ctid, line, timeout=30)
    return f"rc={r.returncode} {r.stdout}{r.stderr}"


def test_deleting_its_own_interface_does_not_erase_what_the_ve_moved(node_agent, engine, live_ve, sink, sender, node,
                                                                    quota_plan):
    """Deleting eth0 inside the VE deletes the whole veth pair, the host's end (where the counters are) with it,
    before any stop hook could save its counts: the bytes since the last reading must not vanish with it."""
    quota_plan.traffic_gb = 0  # unlimited: only the counting is looked at
    quota_plan.save()
    ctid = live_ve.ctid
    meter_node(node.name)
    start = month_row(live_ve).used_bytes
    pushed = push(sender, sink["sink"], live_ve, 80 * MB)
    sink["sink"].stop()
    out = inside(engine, ctid, "ip link del eth0 || ip link delete eth0")
    assert not os.path.exists(f"/sys/class/net/{ifname(engine.layout.tag, ctid)}"), out  # the attack took
    # The node agent keeps the deleted veth's last counts from the kernel's message (a moment after).
    deadline = time.monotonic() + 15
    while True:
        meter_node(node.name)
        used = month_row(live_ve).used_bytes - start
        if used >= pushed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert used >= pushed, (pushed, used, out)


def test_a_throttled_ve_cannot_lift_its_throttle_from_inside(node_agent, engine, live_ve, sink, sender, node):
    """The rate is on the host's end of the veth and on the VE's ifb, outside its network namespace: removing every
    qdisc of its own eth0 (here with the host's tc in its namespace, more than its root has) changes nothing."""
    ctid, addr = live_ve.ctid, live_ve.ip_addresses[0]
    engine.set(ctid, rate="1000", save=True)  # what the traffic_throttle op does
    assert tc_rates(engine, ctid) == (1000, 1000)
    pid = engine.lxc.init_pid(ctid)
    for argv in (["tc", "qdisc", "del", "dev", "eth0", "root"], ["tc", "qdisc", "del", "dev", "eth0", "ingress"],
                 ["tc", "qdisc", "add", "dev", "eth0", "root", "pfifo"]):
        subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, check=False)
    inside(engine, ctid, "tc qdisc del dev eth0 root; tc qdisc del dev eth0 ingress")
    assert tc_rates(engine, ctid) == (1000, 1000)
    assert engine.config(ctid).get("RATE") == "1000"
    down = sender.transfer(addr, Sink.PORT, "d", 50 * MB, secs=3)
    assert down < 1.2 * MB, down  # 1 Mbit/s is 0.375 MB in 3 s


def test_traffic_through_the_ipv4_port_forward_and_a_second_address_counts(node_agent, engine, live_ve, sink, sender,
                                                                           node, quota_plan):
    """A VE root that adds an address of its own choosing to eth0 still sends through the one veth that is
    counted (there is no other way out of its namespace)."""
    quota_plan.traffic_gb = 0
    quota_plan.save()
    ctid = live_ve.ctid
    meter_node(node.name)
    start = month_row(live_ve).used_bytes
    inside(engine, ctid, "ip addr add 10.250.250.250/32 dev eth0; ip link add dummy9 type dummy")
    pushed = push(sender, sink["sink"], live_ve, 40 * MB)
    meter_node(node.name)
    used = month_row(live_ve).used_bytes - start
    assert used >= pushed, (pushed, used)
    assert os.path.exists(f"/sys/class/net/{ifname(engine.layout.tag, ctid)}")
