"""Network fairness: a VE's bandwidth (``--rate``) and its tracked connections (``--conntrack``).

Every packet here goes between VEs of the test root (its own pool, ``net``). iperf3 and the small
Python clients and servers are the host's binaries run in a VE's network namespace (nsenter -n),
so their traffic takes exactly the VE's path through the host.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine.conftest import root_tree, running_tiny_ves
from tests.engine.test_network import host_objects, init_pid, sh, wait_for
from vzengine import Engine, tc
from vzengine.network import ifb_name, ifname

pytestmark = pytest.mark.root

_ids = itertools.count(230_000 + (os.getpid() % 1000) * 100)


@pytest.fixture(scope="module")
def eng(vz_root):
    return Engine(vz_root, lock_wait=30)


@pytest.fixture(scope="module")
def trio(net, eng):
    """Three running tiny VEs, A, B and C, at net.ip(71..73) (IPv4 only)."""
    with running_tiny_ves(eng, _ids, {"A": [net.ip(71)], "B": [net.ip(72)], "C": [net.ip(73)]}) as ves:
        yield ves


def in_ve(eng: Engine, ctid: int, *cmd: str) -> list[str]:
    return ["nsenter", "-t", str(init_pid(eng, ctid)), "-n", *cmd]


def iperf_mbit(eng: Engine, server: int, client: int, addr: str, seconds: float = 2, reverse: bool = False) -> float:
    """Throughput from ``client`` to the iperf3 server in VE ``server`` at ``addr`` (``reverse``:
    from the server to the client), in Mbit/s as the receiver counted it."""
    srv = subprocess.Popen(in_ve(eng, server, "iperf3", "-s", "-1", "-p", "5201"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            r = subprocess.run(in_ve(eng, client, "iperf3", "-c", addr, "-p", "5201", "-t", str(seconds), "-J",
                                     *(["-R"] if reverse else [])), capture_output=True, text=True, timeout=60)
            data = json.loads(r.stdout or "{}")
            if "end" in data and "sum_received" in data["end"]:
                return data["end"]["sum_received"]["bits_per_second"] / 1e6
            time.sleep(0.1)  # the server was not listening yet
        raise AssertionError(f"iperf3 gave no result: {r.stdout[-300:]} {r.stderr[-300:]}")
    finally:
        srv.kill()
        srv.wait()


# --- --rate --------------------------------------------------------------------------------------

def test_rate_limits_a_ves_traffic_both_ways_live_and_comes_off_again(net, cli, eng, trio):
    a, b = trio["A"], trio["B"]
    dev, ifb = ifname(eng.layout.tag, a), ifb_name(eng.layout.tag, a)
    free = iperf_mbit(eng, b, a, net.ip(72), seconds=1)
    assert free > 60, free  # without a limit, far above the one set below

    r = cli("vzctl", "set", str(a), "--rate", "10M", "--save")
    assert r.returncode == 0, r.stderr
    assert eng.config(a).get("RATE") == "10000"
    assert tc.egress_kbit(dev) == 10000 and tc.egress_kbit(ifb) == 10000
    up = iperf_mbit(eng, b, a, net.ip(72))
    down = iperf_mbit(eng, b, a, net.ip(72), reverse=True)
    print(f"--rate 10M: up {up:.2f}, down {down:.2f} Mbit/s (without: {free:.0f})")
    assert 6 <= up <= 12 and 6 <= down <= 12, (up, down)
    # its neighbours keep their own speed
    assert iperf_mbit(eng, b, trio["C"], net.ip(72), seconds=1) > 60
    out = cli("vzlist", "-H", "-o", "ctid,rate,conntrack", str(a), str(b)).stdout.split()
    assert out == [str(a), "10M", "4096", str(b), "-", "4096"], out

    r = cli("vzctl", "set", str(a), "--rate", "unlimited", "--save")
    assert r.returncode == 0, r.stderr
    assert tc.egress_kbit(dev) is None and not os.path.exists(f"/sys/class/net/{ifb}")
    assert iperf_mbit(eng, b, a, net.ip(72), seconds=1) > 60


def test_rate_is_applied_at_start(net, cli, eng, trio, new_ctid):
    ctid = new_ctid()
    r = cli("vzctl", "create", str(ctid), "--ostemplate", "tiny", "--ipadd", net.ip(74), "--rate", "4000")
    assert r.returncode == 0, r.stderr
    assert eng.config(ctid).get("RATE") == "4000"  # a plain number is kbit/s, as in OpenVZ
    eng.start(ctid, wait_boot=True)
    assert tc.egress_kbit(ifname(eng.layout.tag, ctid)) == 4000
    up = iperf_mbit(eng, trio["B"], ctid, net.ip(72))
    print(f"--rate 4000 at start: up {up:.2f} Mbit/s")
    assert 2.4 <= up <= 4.8, up


def test_a_failed_set_takes_a_live_limit_back(cli, vz_root, eng, trio, monkeypatch):
    a = trio["A"]
    dev = ifname(eng.layout.tag, a)
    conf = (vz_root / f"conf/{a}.conf").read_text()
    rules = host_objects(f"VZ-{eng.layout.tag}-{a}")
    monkeypatch.setenv("VZ_FAIL_AT", "set:after-limits")
    r = cli("vzctl", "set", str(a), "--rate", "5M", "--conntrack", "99", "--save")
    assert r.returncode != 0
    assert tc.egress_kbit(dev) is None and not os.path.exists(f"/sys/class/net/{ifb_name(eng.layout.tag, a)}")
    # the same rules (a rule put back may come back at another place in its chain's listing)
    after = host_objects(f"VZ-{eng.layout.tag}-{a}")
    assert sorted(after) == sorted(rules)
    assert not any("--connlimit-above 99 " in r + " " for r in after)
    assert (vz_root / f"conf/{a}.conf").read_text() == conf


# {a}: VE A's id
BAD = [
    (["--rate", "-5"], "invalid --rate '-5'"),
    (["--rate", "10Q"], "invalid --rate '10Q'"),
    (["--rate", "fast"], "invalid --rate 'fast'"),
    (["--rate", "1"], "use 8 kbit/s to 100G"),
    (["--rate", "500G"], "use 8 kbit/s to 100G"),
    (["--conntrack", "-1"], "invalid --conntrack '-1'"),
    (["--conntrack", "5"], "use a whole number from 16 to 10000000"),
    (["--conntrack", "1e3"], "invalid --conntrack '1e3'"),
    (["--rate", "5M", "--conntrack", "lots"], "invalid --conntrack 'lots'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_limits_are_refused_and_change_nothing(cli, vz_root, eng, trio, args, message):
    a = trio["A"]
    dev = ifname(eng.layout.tag, a)
    before = (root_tree(vz_root), (vz_root / f"conf/{a}.conf").read_text(), host_objects(eng.layout.tag),
              sh(f"tc qdisc show dev {dev}"))
    r = cli("vzctl", "set", str(a), *args, "--save")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: ") and message in lines[0], r.stderr
    assert (root_tree(vz_root), (vz_root / f"conf/{a}.conf").read_text(), host_objects(eng.layout.tag),
            sh(f"tc qdisc show dev {dev}")) == before


# --- --conntrack ---------------------------------------------------------------------------------

SERVER = r"""
import os, socket, sys, time
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 7000)); t.listen(512)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7001)); u.settimeout(0.05)
t.settimeout(0.05)
held, peers = [], set()
print("ready", flush=True)
end = time.monotonic() + 90
while time.monotonic() < end:
    try:
        held.append(t.accept()[0])
    except OSError:
        pass
    try:
        _, p = u.recvfrom(100); peers.add(p)
        name = "/tmp/vzct-udp-peers.%s" % sys.argv[1]
        open(name + ".new", "w").write(str(len(peers))); os.replace(name + ".new", name)  # never read half-written
    except OSError:
        pass
"""

CLIENT = r"""
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
held, ok, refused = [], 0, 0
for _ in range(n):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((addr, 7000)); held.append(s); ok += 1
    except OSError:
        refused += 1; s.close()
print(f"{ok} {refused}", flush=True)
sys.stdin.readline()  # hold the connections until told
"""

UDP_CLIENT = r"""
import os, socket, sys, time
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(int(sys.argv[2]))]
for _ in range(3):
    for s in socks:
        try:
            s.sendto(b"x", (sys.argv[1], 7001))
        except OSError:
            pass
    time.sleep(0.2)
"""


def connect_many(eng: Engine, ctid: int, addr: str, n: int) -> tuple[subprocess.Popen, int, int]:
    """Open ``n`` TCP connections from VE ``ctid`` and hold them: (the client, opened, refused)."""
    p = subprocess.Popen(in_ve(eng, ctid, sys.executable, "-c", CLIENT, addr, str(n)), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    ok, refused = map(int, p.stdout.readline().split())
    return p, ok, refused


def test_a_ve_over_its_conntrack_cap_is_refused_while_its_neighbour_connects(net, cli, eng, trio):
    a, b, c = trio["A"], trio["B"], trio["C"]
    r = cli("vzctl", "set", str(a), "--conntrack", "20", "--save")
    assert r.returncode == 0, r.stderr
    assert eng.config(a).get("CONNTRACK_MAX") == "20"
    assert "--connlimit-above 20 --connlimit-mask 0" in sh(f"iptables-save -t filter | grep VZ-{eng.layout.tag}-{a}")
    tag = f"{os.getpid()}-{b}"
    peers = f"/tmp/vzct-udp-peers.{tag}"
    procs: list[subprocess.Popen] = []

    def serve() -> None:
        server = subprocess.Popen(in_ve(eng, b, sys.executable, "-c", SERVER, tag), stdout=subprocess.PIPE,
                                  text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"

    try:
        serve()
        p, ok, refused = connect_many(eng, a, net.ip(72), 30)
        procs.append(p)
        assert (ok, refused) == (20, 10)  # the cap, and not one more
        p, ok, refused = connect_many(eng, c, net.ip(72), 30)  # the neighbour, meanwhile
        procs.append(p)
        assert (ok, refused) == (30, 0)
        for p in procs:  # every connection closed at both ends no longer counts
            p.kill()
            p.wait()
        procs.clear()
        time.sleep(0.3)
        serve()
        p, ok, refused = connect_many(eng, a, net.ip(72), 20)
        procs.append(p)
        assert (ok, refused) == (20, 0)
        p.kill()
        # UDP counts too: of 40 sockets of A, at most 20 reach the server (a TCP connection of
        # before may still be closing and count)
        procs[0].kill()
        procs[0].wait()
        time.sleep(0.3)
        serve()
        subprocess.run(in_ve(eng, a, sys.executable, "-c", UDP_CLIENT, net.ip(72), "40"), timeout=30, check=True)
        assert wait_for(lambda: os.path.exists(peers))
        time.sleep(0.3)
        assert 10 <= int(Path(peers).read_text()) <= 20
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait()
        with contextlib.suppress(OSError):
            os.unlink(peers)
    r = cli("vzctl", "set", str(a), "--conntrack", "default", "--save")
    assert r.returncode == 0, r.stderr
    assert "CONNTRACK_MAX" not in eng.config(a).values
    assert "--connlimit-above 4096 " in sh(f"iptables-save -t filter | grep VZ-{eng.layout.tag}-{a}")
