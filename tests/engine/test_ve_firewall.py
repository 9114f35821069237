"""The per-VE firewall (vzengine/vefirewall.py): enforced on the host, so the VE's root cannot lift it.

Every packet stays on this machine: between a VE of the test root (its pool, ``net``) and a network
namespace the ``lan`` fixture makes (a free subnet of its own) standing in for a client outside.
The servers are busybox httpd processes the tests start inside the VE.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_network import BUSYBOX, host_objects, init_pid, sh, wait_for
from tests.engine.test_network import lan as _lan  # noqa: F401 (the fixture behind outside)
from vzengine import Engine, InvalidInput
from vzengine.vefirewall import MAX_RULES, parse_rule

pytestmark = pytest.mark.root

_ids = itertools.count(230_000 + (os.getpid() % 1000) * 100)
P1, P2 = 8081, 8082


def connects(pid: int, addr: str, port: int, timeout: float = 1.5) -> bool:
    """Whether a TCP connection from the namespace of ``pid`` to addr:port is answered."""
    code = ("import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({addr!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n")
    return subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code],
                          capture_output=True, timeout=timeout + 10).returncode == 0


def serve(eng: Engine, ctid: int) -> None:
    """busybox httpd on P1 and P2 inside the VE (again after a start or a reboot)."""
    r = eng.exec(ctid, f"mkdir -p /tmp/www && echo hi > /tmp/www/index.html && "
                       f"setsid /usr/local/bin/busybox httpd -p {P1} -h /tmp/www && "
                       f"setsid /usr/local/bin/busybox httpd -p {P2} -h /tmp/www")
    assert r.returncode == 0, r.stderr


def mangle() -> list[str]:
    """The mangle table of both families, without iptables-save's comment lines (they carry the time)."""
    return [ln for ln in sh("iptables-save -t mangle; ip6tables-save -t mangle").splitlines() if not ln.startswith("#")]


@pytest.fixture
def outside(_lan):  # noqa: F811 (the fixture, by name)
    """A client outside the host: a namespace of its own on a subnet of its own (test_network's ``lan``)."""
    return _lan


@pytest.fixture(scope="module")
def eng(vz_root):
    return Engine(vz_root, lock_wait=30)


@pytest.fixture(scope="module")
def ve(net, eng):
    """A running debian-12-sysv VE (iptables inside) at net.ip(71) and net.ip6(0x71), serving P1 and P2."""
    ctid = next(_ids)
    try:
        eng.create(ctid, "debian-12-sysv", ipadd=[net.ip(71), net.ip6(0x71)])
        eng.start(ctid, wait_boot=True)
        data = Path(BUSYBOX).read_bytes()
        r = eng.exec(ctid, "cat > /usr/local/bin/busybox && chmod 755 /usr/local/bin/busybox", input=data)
        assert r.returncode == 0, r.stderr
        serve(eng, ctid)
        yield ctid
    finally:
        with contextlib.suppress(Exception):
            eng.destroy(ctid)


def both(pid: int, net, port: int) -> tuple[bool, bool]:
    return connects(pid, net.ip(71), port), connects(pid, net.ip6(0x71), port)


def test_it_lets_in_only_what_the_rules_accept_and_the_ves_root_cannot_lift_it(net, eng, ve, outside, cli):
    pid, _host_if, o = outside
    assert both(pid, net, P1) == (True, True) and both(pid, net, P2) == (True, True)  # open by default
    r = cli("vzctl", "set", str(ve), "--firewall-policy", "drop", "--firewall-rule-add", f"accept tcp {P1}", "--save")
    assert r.returncode == 0, r.stderr
    assert both(pid, net, P1) == (True, True)
    assert both(pid, net, P2) == (False, False)  # dropped: the connection times out
    assert eng.status(ve).extra["firewall_rules"] == [f"accept tcp {P1}"]
    out = cli("vzlist", "-a", "-H", "-o", "ctid,firewall", str(ve)).stdout.split()
    assert out == [str(ve), "drop/1"]

    # sources: P1 from the client's IPv4 network only, P2 from a network the client is not in
    r = cli("vzctl", "set", str(ve), "--firewall-rule-del", "all",
            "--firewall-rule-add", f"accept tcp {P1} from {o.pool}",
            "--firewall-rule-add", f"accept tcp {P2} from 192.0.2.0/24", "--save")
    assert r.returncode == 0, r.stderr
    assert both(pid, net, P1) == (True, False)  # an IPv4 source: IPv6 gets the policy
    assert both(pid, net, P2) == (False, False)
    r = cli("vzctl", "set", str(ve), "--firewall-rule-add", f"accept tcp {P1}-{P2} from {o.pool6}", "--save")
    assert r.returncode == 0, r.stderr
    assert both(pid, net, P1) == (True, True) and both(pid, net, P2) == (False, True)

    # the VE's root opens everything inside: the host still drops what the rules do not accept
    r = eng.exec(ve, "iptables -F; iptables -P INPUT ACCEPT; ip6tables -F; ip6tables -P INPUT ACCEPT; "
                     "iptables -t mangle -F; iptables -t raw -F")
    assert r.returncode == 0, r.stderr
    assert connects(pid, net.ip(71), P2) is False and connects(pid, net.ip(71), P1) is True

    # an ICMP rule and an accept-all policy with a drop rule
    r = cli("vzctl", "set", str(ve), "--firewall-policy", "accept", "--firewall-rule-del", "all",
            "--firewall-rule-add", f"drop tcp {P2}", "--save")
    assert r.returncode == 0, r.stderr
    assert both(pid, net, P1) == (True, True) and both(pid, net, P2) == (False, False)


def test_the_rules_hold_after_stop_start_and_a_reboot_inside(net, eng, ve, outside, cli):
    pid, _host_if, _o = outside
    eng.set(ve, firewall_policy="drop", firewall_rules=[f"accept tcp {P1}"], save=True)
    eng.stop(ve)
    assert not any(f"FW{ve} " in ln for ln in mangle())  # a stopped VE has no chain
    eng.start(ve, wait_boot=True)
    serve(eng, ve)
    assert both(pid, net, P1) == (True, True) and both(pid, net, P2) == (False, False)
    first = init_pid(eng, ve)
    eng.exec(ve, "reboot")
    assert wait_for(lambda: eng.lxc.init_pid(ve) not in (None, first), timeout=30), "the VE did not come back"
    eng.wait_booted(ve, timeout=60)
    assert wait_for(lambda: eng.exec(ve, "ip -o addr show dev eth0").stdout.count("inet") >= 2, timeout=15)
    serve(eng, ve)
    assert wait_for(lambda: connects(pid, net.ip(71), P1), timeout=10)
    assert both(pid, net, P1) == (True, True) and both(pid, net, P2) == (False, False)


def test_a_failed_change_is_undone_live(net, eng, ve, outside, monkeypatch):
    pid, _host_if, _o = outside
    eng.set(ve, firewall_policy="drop", firewall_rules=[f"accept tcp {P1}"], save=True)
    before = mangle()
    monkeypatch.setenv("VZ_FAIL_AT", "firewall:after-ipv4")  # the IPv4 rules changed, then a failure
    with pytest.raises(Exception, match="injected failure"):
        eng.set(ve, firewall_policy="accept", firewall_rules=[], save=True)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert mangle() == before
    assert eng.status(ve).extra["firewall_policy"] == "drop"
    assert connects(pid, net.ip(71), P2) is False


@pytest.mark.parametrize("args, message", [
    (["--firewall-rule-add", "accept tcp 70000"], "not a number from 1 to 65535"),
    (["--firewall-rule-add", "accept tcp 0"], "not a number from 1 to 65535"),
    (["--firewall-rule-add", "accept tcp 90-80"], "runs backwards"),
    (["--firewall-rule-add", "accept tcp 22 from 10.0.0.300/8"], "is not an IPv4 or IPv6 address"),
    (["--firewall-rule-add", "accept tcp 22 from 10.0.0.1/8"], "host bits set"),
    (["--firewall-rule-add", "accept sctp 22"], "protocol 'sctp'"),
    (["--firewall-rule-add", "allow tcp 22"], "action 'allow'"),
    (["--firewall-rule-add", "accept icmp 22"], "only tcp and udp rules take a port"),
    (["--firewall-rule-add", "accept tcp 22 to 10.0.0.0/8"], "use ACTION PROTO"),
    (["--firewall-rule-del", "9"], "has no firewall rule '9'"),
    (["--firewall-rule-add", "accept tcp 22", "--firewall-rule-add", "accept tcp 22"], "given twice"),
])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(eng, ve, cli, vz_root, args, message):
    eng.set(ve, firewall_policy="drop", firewall_rules=[f"accept tcp {P1}"], save=True)
    conf = (vz_root / "conf" / f"{ve}.conf").read_text()
    before = mangle()
    r = cli("vzctl", "set", str(ve), *args, "--save")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (vz_root / "conf" / f"{ve}.conf").read_text() == conf and mangle() == before


def test_too_many_rules_are_refused(eng, ve):
    with pytest.raises(InvalidInput, match=f"{MAX_RULES} firewall rules at most"):
        eng.set(ve, firewall_rules=[f"accept tcp {n}" for n in range(1, MAX_RULES + 2)], save=True)
    eng.set(ve, firewall_rules=[f"accept tcp {n}" for n in range(1, MAX_RULES + 1)], save=True)  # the cap is fine
    assert len(eng.status(ve).extra["firewall_rules"]) == MAX_RULES


def test_the_rule_syntax_round_trips():
    for text in ("accept tcp 22", "drop udp 53 from 10.0.0.0/8", "accept tcp 8000-8080 from fd00::/8",
                 "accept icmp", "drop any from 192.0.2.1/32", "accept tcp 22 from 0.0.0.0/0"):
        assert str(parse_rule(text)) == text
    assert str(parse_rule("  ACCEPT  TCP 22 from 192.0.2.1 ")) == "accept tcp 22 from 192.0.2.1/32"


def test_destroy_leaves_no_chain_of_the_ve(net, eng, new_ctid, cli):
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[net.ip(72), net.ip6(0x72)], firewall_policy="drop",
               firewall_rule_add=["accept tcp 22", "accept icmp from fd00::/8"])
    eng.start(ctid, wait_boot=True)
    assert len(host_objects(f"-FW{ctid}")) >= 4  # chains and jumps, IPv4 and IPv6
    eng.destroy(ctid)
    assert host_objects(f"-FW{ctid}") == []
    assert not (eng.layout.rundir / "vefirewall" / str(ctid)).exists()
