"""VE networking: own addresses in routed mode, isolation, anti-spoofing, NAT, port forwards.

Every packet here stays on this machine: it goes between the host and VEs (or namespaces)
the tests made, at addresses of the test root's pool (``net``: a 10.X.Y.0/24 and fdXX:YY::/64
of its own per run, see tests/conftest.py) or of a subnet the test creates itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_test_net
from tests.engine.conftest import BIN, root_tree, running_tiny_ves
from vzengine import Engine, InvalidInput, Unsupported, criu
from vzengine.lock import ve_lock
from vzengine.network import ifname

pytestmark = pytest.mark.root

# Module-scoped VEs get ids of their own range (the conftest's counter is per test function).
_ids = itertools.count(200_000 + (os.getpid() % 1000) * 100)
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


# --- helpers -------------------------------------------------------------------------------------

def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout


def host_objects(needle: str, address: bool = False) -> list[str]:
    """Every link, route, proxy entry and ip(6)tables line of the host that mentions ``needle``
    (with ``address``, as a whole address: 10.1.2.2 does not match 10.1.2.21)."""
    pattern = re.compile(rf"(?<![0-9a-f:.]){re.escape(needle)}(?![0-9a-f:.])" if address else re.escape(needle))
    out = []
    for cmd in ("ip -o link", "ip route", "ip -6 route", "ip neigh show proxy", "ip -6 neigh show proxy",
                "iptables-save", "ip6tables-save"):
        out += [f"{cmd}: {ln}" for ln in sh(cmd).splitlines() if pattern.search(ln)]
    return out


def ve_pings(eng: Engine, ctid: int, addr: str, src: str | None = None, count: int = 1) -> bool:
    opt = f"-I {src} " if src else ""
    return eng.exec(ctid, f"ping -c {count} -i 0.2 -W 1 {opt}{addr}").returncode == 0


def host_pings(addr: str, count: int = 1) -> bool:
    six = ["-6"] if ":" in addr else []
    return subprocess.run([BUSYBOX, "ping", *six, "-c", str(count), "-i", "0.2", "-W", "1", addr],
                          capture_output=True).returncode == 0


def tcp_banner(addr: str, port: int, timeout: float = 2.0) -> bytes | None:
    """The first bytes a TCP server at addr:port sends (after an HTTP request), None if unreachable."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(64)
    except OSError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def init_pid(eng: Engine, ctid: int) -> int:
    pid = eng.lxc.init_pid(ctid)
    assert pid, f"VE {ctid} has no init"
    return pid


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Capture:
    """A packet capture on a VE's eth0: a promiscuous AF_PACKET socket opened in its namespace."""

    def __init__(self, pid: int, ifname: str = "eth0"):
        self.pid, self.ifname = pid, ifname

    def __enter__(self) -> Capture:
        out: dict = {}

        def opener() -> None:  # setns() moves this thread only
            try:
                with open(f"/proc/{self.pid}/ns/net") as ns:
                    if _libc.setns(ns.fileno(), 0x40000000) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
                s.bind((self.ifname, 0))
                mreq = struct.pack("iHH8s", socket.if_nametoindex(self.ifname), 1, 0, b"")  # PACKET_MR_PROMISC
                s.setsockopt(263, 1, mreq)  # SOL_PACKET, PACKET_ADD_MEMBERSHIP
                out["sock"] = s
            except OSError as e:
                out["error"] = e

        t = threading.Thread(target=opener)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        self.sock = out["sock"]
        self.sock.setblocking(False)
        return self

    def __exit__(self, *_exc) -> None:
        self.sock.close()

    def addresses(self) -> list[str]:
        """The IP addresses (source, destination, ARP sender and target) in what arrived so far."""
        seen = []
        while True:
            try:
                frame = self.sock.recv(65535)
            except BlockingIOError:
                return seen
            kind = frame[12:14]
            if kind == b"\x08\x00":
                seen += [socket.inet_ntop(socket.AF_INET, frame[26:30]), socket.inet_ntop(socket.AF_INET, frame[30:34])]
            elif kind == b"\x86\xdd":
                seen += [socket.inet_ntop(socket.AF_INET6, frame[22:38]),
                         socket.inet_ntop(socket.AF_INET6, frame[38:54])]
            elif kind == b"\x08\x06":
                seen += [socket.inet_ntop(socket.AF_INET, frame[28:32]), socket.inet_ntop(socket.AF_INET, frame[38:42])]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eng(vz_root):
    return Engine(vz_root, lock_wait=30)


@pytest.fixture(scope="module")
def trio(net, eng):
    """Three running tiny VEs: A, B and C, each with an IPv4 and an IPv6 address."""
    addresses = {name: [f"{net.prefix}.{n}", f"{net.prefix6}{n}"] for name, n in (("A", 21), ("B", 22), ("C", 23))}
    with running_tiny_ves(eng, _ids, addresses) as ves:
        yield ves


@pytest.fixture(scope="module")
def debian_ve(net, eng):
    """A running debian-12-sysv VE (sshd on port 22, iptables inside) at net.ip(24)."""
    ctid = next(_ids)
    try:
        eng.create(ctid, "debian-12-sysv", ipadd=[net.ip(24), net.ip6(0x24)])
        eng.start(ctid, wait_boot=True)
        yield ctid
    finally:
        with contextlib.suppress(Exception):
            eng.destroy(ctid)


# --- reachability --------------------------------------------------------------------------------

def test_two_ves_reach_each_other_and_the_host_over_ipv4_and_ipv6(net, eng, trio):
    a, b = trio["A"], trio["B"]
    addrs = eng.exec(a, "ip addr show dev eth0").stdout
    assert f"inet {net.ip(21)}/32" in addrs and f"inet6 {net.ip6(0x21)}/128" in addrs
    for src, dst in ((a, "22"), (b, "21")):
        assert ve_pings(eng, src, f"{net.prefix}.{dst}")
        assert ve_pings(eng, src, f"{net.prefix6}{dst}")
        assert ve_pings(eng, src, net.ip(1))  # the host, at HOST_IP
        assert ve_pings(eng, src, net.ip6(0x1))
    assert host_pings(net.ip(21)) and host_pings(net.ip6(0x22))
    assert eng.status(a).ip_addresses == [net.ip(21), net.ip6(0x21)]


def test_an_address_added_to_a_running_ve_answers_at_once_and_is_gone_after_ipdel(net, cli, eng, trio, vz_root):
    a, b = trio["A"], trio["B"]
    r = cli("vzctl", "set", str(a), "--ipadd", net.ip(31), "--ipadd", net.ip6(0x31), "--save")
    assert r.returncode == 0, r.stderr
    assert ve_pings(eng, b, net.ip(31)) and ve_pings(eng, b, net.ip6(0x31))
    conf = (vz_root / f"conf/{a}.conf").read_text()
    assert f'IP_ADDRESS="{net.ip(21)} {net.ip6(0x21)} {net.ip(31)} {net.ip6(0x31)}"' in conf
    r = cli("vzctl", "set", str(a), "--ipdel", net.ip(31), "--ipdel", net.ip6(0x31), "--save")
    assert r.returncode == 0, r.stderr
    assert not ve_pings(eng, b, net.ip(31)) and not ve_pings(eng, b, net.ip6(0x31))
    assert net.ip(31) not in eng.exec(a, "ip addr").stdout
    assert host_objects(net.ip(31), address=True) == [] and host_objects(net.ip6(0x31), address=True) == []
    assert ve_pings(eng, b, net.ip(21))  # the rest is untouched


def test_a_failed_set_undoes_the_live_network_change(net, eng, trio):
    a = trio["A"]
    with pytest.raises(Unsupported):  # tiny has no useradd: fails after the address was applied
        eng.set(a, ipadd=[net.ip(32)], userpasswd=[("alice", "wonder")])
    assert net.ip(32) not in eng.exec(a, "ip addr").stdout
    assert host_objects(net.ip(32), address=True) == []
    assert eng.config(a).get_list("IP_ADDRESS") == [net.ip(21), net.ip6(0x21)]


# --- isolation -----------------------------------------------------------------------------------

def test_a_ve_capturing_on_its_interface_sees_none_of_the_traffic_between_two_others(net, eng, trio):
    a, b, c = trio["A"], trio["B"], trio["C"]
    with Capture(init_pid(eng, c)) as cap:
        assert ve_pings(eng, a, net.ip(22), count=5) and ve_pings(eng, b, net.ip6(0x21), count=5)
        assert ve_pings(eng, a, net.ip(1)) and ve_pings(eng, b, net.ip6(0x1))
        assert host_pings(net.ip(23))  # C's own traffic: the capture does work
        time.sleep(0.2)
        seen = set(cap.addresses())
    assert net.ip(23) in seen
    assert not seen & {net.ip(21), net.ip(22), net.ip6(0x21), net.ip6(0x22)}, seen


def test_a_ve_that_takes_another_ves_address_can_neither_send_from_it_nor_receive_for_it(net, eng, trio):
    a, b = trio["A"], trio["B"]
    try:
        eng.exec(a, f"ip addr add {net.ip(22)}/32 dev eth0; ip addr add {net.ip(99)}/32 dev eth0; "
                    f"ip -6 addr add {net.ip6(0x22)}/128 dev eth0")
        assert wait_for(lambda: "tentative" not in eng.exec(a, "ip -6 addr show dev eth0").stdout)
        # sending from it (or from any address the host did not assign to A) gets nowhere
        assert not ve_pings(eng, a, net.ip(1), src=net.ip(22), count=2)
        assert not ve_pings(eng, a, net.ip(23), src=net.ip(99))
        assert not ve_pings(eng, a, net.ip6(0x1), src=net.ip6(0x22), count=2)
        assert ve_pings(eng, a, net.ip(1), src=net.ip(21))  # its own address still works
        # claiming it over ARP does not move it either
        eng.exec(a, f"arping -U -c 2 -s {net.ip(22)} -I eth0 {net.ip(1)}")
        with Capture(init_pid(eng, a)) as cap:
            assert host_pings(net.ip(22), count=3) and host_pings(net.ip6(0x22), count=2)
            assert ve_pings(eng, trio["C"], net.ip(22)) and ve_pings(eng, trio["C"], net.ip6(0x22))
            time.sleep(0.2)
            seen = set(cap.addresses())
        assert not seen & {net.ip(22), net.ip6(0x22)}, seen  # the owner answered, A saw nothing
        assert ve_pings(eng, b, net.ip(1)) and ve_pings(eng, b, net.ip6(0x1))
    finally:
        eng.exec(a, f"ip addr del {net.ip(22)}/32 dev eth0; ip addr del {net.ip(99)}/32 dev eth0; "
                    f"ip -6 addr del {net.ip6(0x22)}/128 dev eth0")


def test_traffic_counters_count_what_a_ve_sends_and_receives(net, eng, trio, cli):
    a = trio["A"]
    before = eng.status(a).extra
    assert eng.exec(a, f"ping -c 10 -i 0.01 -s 1000 -W 1 {net.ip(1)}").returncode == 0
    after = eng.status(a).extra
    assert after["traffic_out_packets"] - before["traffic_out_packets"] >= 10
    assert after["traffic_in_packets"] - before["traffic_in_packets"] >= 10
    assert after["traffic_out_bytes"] - before["traffic_out_bytes"] >= 10 * 1000
    assert after["traffic_in_bytes"] - before["traffic_in_bytes"] >= 10 * 1000
    r = cli("vzlist", "-H", "-o", "ctid,traffic_in,traffic_out,packets_in,packets_out", str(a))
    assert r.returncode == 0, r.stderr
    fields = r.stdout.split()
    assert fields[0] == str(a) and all(int(f) >= after[k] for f, k in zip(
        fields[1:], ("traffic_in_bytes", "traffic_out_bytes", "traffic_in_packets", "traffic_out_packets"),
        strict=True))


def test_addresses_come_back_after_a_reboot_inside_the_ve(net, eng, new_ctid, trio):
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[net.ip(33), net.ip6(0x33)])
    eng.start(ctid, wait_boot=True)
    first = init_pid(eng, ctid)
    eng.exec(ctid, "reboot")
    assert wait_for(lambda: eng.lxc.init_pid(ctid) not in (None, first), timeout=30), "the VE did not come back"
    eng.wait_booted(ctid, timeout=30)
    addrs = eng.exec(ctid, "ip addr show dev eth0").stdout
    assert f"{net.ip(33)}/32" in addrs and f"{net.ip6(0x33)}/128" in addrs
    assert ve_pings(eng, trio["B"], net.ip(33)) and ve_pings(eng, trio["B"], net.ip6(0x33))
    assert ve_pings(eng, ctid, net.ip(1))
    # again while another engine operation holds the VE: the hook must not wait for it
    second = init_pid(eng, ctid)
    with ve_lock(eng.layout.lockdir, ctid, "backup"):
        eng.exec(ctid, "reboot")
        assert wait_for(lambda: eng.lxc.init_pid(ctid) not in (None, second), timeout=30)
        assert wait_for(lambda: ve_pings(eng, trio["B"], net.ip(33)), timeout=15)


# --- firewall, NAT, port forwards ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("template", ["debian-12", "debian-12-sysv"])
def test_the_default_templates_include_iproute2_ping_and_iptables(eng, template):
    tree = eng.templates.ensure(template)
    for tool in ("ip", "ping", "iptables", "ip6tables"):
        assert any(os.path.lexists(tree / d / tool) for d in ("usr/sbin", "usr/bin", "sbin", "bin")), tool


@pytest.mark.slow
def test_iptables_inside_a_ve_blocks_a_port_for_that_ve_alone(net, eng, debian_ve, trio):
    a = trio["A"]
    eng.exec(a, "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && httpd -p 22 -h /tmp/www")
    assert (tcp_banner(net.ip(24), 22) or b"").startswith(b"SSH-2.0")
    assert (tcp_banner(net.ip(21), 22) or b"").startswith(b"HTTP/1")
    host_rules = host_objects(eng.layout.tag)
    try:
        r = eng.exec(debian_ve, "iptables -A INPUT -i eth0 -p tcp --dport 22 -j DROP")
        assert r.returncode == 0, r.stderr
        assert tcp_banner(net.ip(24), 22, timeout=1) is None  # blocked for this VE ...
        assert (tcp_banner(net.ip(21), 22) or b"").startswith(b"HTTP/1")  # ... and for it alone
        inside = eng.exec(debian_ve, "bash -c 'exec 3<>/dev/tcp/127.0.0.1/22 && head -c 7 <&3'").stdout
        assert inside == "SSH-2.0"  # sshd is still there, only the rule keeps others out
        assert host_objects(eng.layout.tag) == host_rules  # nothing of this root changed on the host
    finally:
        eng.exec(debian_ve, "iptables -F INPUT")
    assert (tcp_banner(net.ip(24), 22) or b"").startswith(b"SSH-2.0")
    # its own routes, with their own MTU and source address, work as on a real server
    r = eng.exec(debian_ve, f"ip route add {net.ip(21)}/32 via {net.ip(1)} dev eth0 onlink mtu 1280 src {net.ip(24)} "
                            f"&& ip route get {net.ip(21)} && ping -c 1 -W 1 -M do -s 1300 {net.ip(21)}; "
                            f"ping -c 1 -W 1 -s 1200 {net.ip(21)}")
    assert "mtu 1280" in r.stdout and f"1208 bytes from {net.ip(21)}" in r.stdout, r.stdout + r.stderr
    eng.exec(debian_ve, f"ip route del {net.ip(21)}/32")


@pytest.mark.slow
def test_a_port_forward_reaches_a_tcp_server_inside_the_ve(net, cli, eng, debian_ve, trio):
    port = free_port()
    r = cli("vzctl", "set", str(debian_ve), "--portfwd", f"tcp:{port}:22", "--save")
    assert r.returncode == 0, r.stderr
    assert eng.status(debian_ve).extra["portfwd"] == [f"tcp:{port}:22"]
    own = [ln.split()[3].split("/")[0] for ln in sh("ip -4 -o addr show scope global").splitlines()
           if not ln.split()[1].startswith(("vz", "t3h"))]
    for addr in (net.ip(1), *own[:1]):  # from the host itself, at any of its real addresses
        assert (tcp_banner(addr, port) or b"").startswith(b"SSH-2.0"), addr
    assert tcp_banner("127.0.0.1", port, timeout=1) is None  # the host's loopback stays the host's own
    assert b"SSH-2.0" in eng.exec(trio["B"], f"echo | nc -w 2 {net.ip(1)} {port}").stdout.encode()  # from a VE
    r = cli("vzctl", "set", str(debian_ve), "--portfwd-del", f"tcp:{port}", "--save")
    assert r.returncode == 0, r.stderr
    assert tcp_banner(net.ip(1), port, timeout=1) is None
    assert host_objects(f"--dport {port} ") == []


def test_a_port_forward_reaches_the_ve_over_ipv6_too(net, cli, eng, trio):
    a = trio["A"]  # net.ip(21) and net.ip6(0x21): IPv4 forwards go to the one, IPv6 to the other
    r = eng.exec(a, "mkdir -p /tmp/w6 && echo hi > /tmp/w6/index.html && "
                    "(sh -c 'echo $$ > /tmp/w6.pid; exec httpd -f -p 8080 -h /tmp/w6' </dev/null >/dev/null 2>&1 &)")
    assert r.returncode == 0, r.stderr
    port = free_port()
    try:
        assert wait_for(lambda: (tcp_banner(net.ip6(0x21), 8080) or b"").startswith(b"HTTP/1"))
        r = cli("vzctl", "set", str(a), "--portfwd", f"tcp:{port}:8080", "--save")
        assert r.returncode == 0, r.stderr
        assert f"-j DNAT --to-destination [{net.ip6(0x21)}]:8080" in sh("ip6tables-save -t nat")
        for addr in (net.ip6(0x1), net.ip(1)):  # the host's address on the VEs' links, both families
            assert (tcp_banner(addr, port) or b"").startswith(b"HTTP/1"), addr
        # without an IPv6 address, no IPv6 forward (and back again when it has one)
        assert cli("vzctl", "set", str(a), "--ipdel", net.ip6(0x21), "--save").returncode == 0
        assert tcp_banner(net.ip6(0x1), port, timeout=1) is None
        assert (tcp_banner(net.ip(1), port) or b"").startswith(b"HTTP/1")
        assert cli("vzctl", "set", str(a), "--ipadd", net.ip6(0x21), "--save").returncode == 0
        assert wait_for(lambda: (tcp_banner(net.ip6(0x1), port) or b"").startswith(b"HTTP/1"))
    finally:
        cli("vzctl", "set", str(a), "--portfwd-del", "all", "--save")
        eng.exec(a, "kill $(cat /tmp/w6.pid)")
    assert tcp_banner(net.ip6(0x1), port, timeout=1) is None
    assert host_objects(f"--dport {port} ") == []
    assert eng.config(a).get_list("IP_ADDRESS") == [net.ip(21), net.ip6(0x21)]


def test_a_taken_host_port_cannot_be_forwarded(cli, eng, trio):
    a, b = trio["A"], trio["B"]
    port = free_port()
    assert cli("vzctl", "set", str(a), "--portfwd", f"tcp:{port}:80", "--save").returncode == 0
    try:
        r = cli("vzctl", "set", str(b), "--portfwd", f"tcp:{port}:80", "--save")
        assert r.returncode == 2 and f"host port tcp:{port} is already forwarded to VE {a}" in r.stderr
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            busy = listener.getsockname()[1]
            r = cli("vzctl", "set", str(b), "--portfwd", f"tcp:{busy}:80", "--save")
            assert r.returncode == 2 and "is in use by a program on the host" in r.stderr
        assert "PORTFWD" not in eng.config(b).values
    finally:
        cli("vzctl", "set", str(a), "--portfwd-del", "all", "--save")
    assert host_objects(f"--dport {port} ") == []


# --- the pool ------------------------------------------------------------------------------------

def test_the_pool_hands_out_free_addresses_even_to_concurrent_creates(net, cli, eng, new_ctid, vz_root):
    ids = [new_ctid() for _ in range(3)]
    procs = [subprocess.Popen([str(BIN / "vzctl"), "--root", str(vz_root), "-q", "create", str(c),
                               "--ostemplate", "tiny", "--ipadd", "auto", "--ipadd", "auto6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in ids]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = [eng.config(c).get_list("IP_ADDRESS") for c in ids]
    v4 = [a for addrs in got for a in addrs if "." in a]
    v6 = [a for addrs in got for a in addrs if ":" in a]
    assert len(set(v4)) == 3 and len(set(v6)) == 3, got
    taken = {a for ctid in eng.ctids() if ctid not in ids for a in eng.config(ctid).get_list("IP_ADDRESS")}
    assert not (set(v4) | set(v6)) & taken
    assert all(re.fullmatch(rf"{re.escape(net.prefix)}\.\d+", a) and a not in (net.ip(0), net.ip(1), net.ip(255))
               for a in v4)
    assert all(a.startswith(net.prefix6) and a != net.ip6(0x1) for a in v6)


@pytest.fixture(scope="module")
def stopped_pair(net, eng):
    """Two stopped VEs: X at net.ip(41) forwarding a host port, Y at net.ip(42)."""
    ids = []
    try:
        port = free_port()
        x = next(_ids)
        ids.append(x)
        eng.create(x, "tiny", ipadd=[net.ip(41)], portfwd=[f"tcp:{port}:22"])
        y = next(_ids)
        ids.append(y)
        eng.create(y, "tiny", ipadd=[net.ip(42)])
        yield x, y, port
    finally:
        for ctid in ids:
            with contextlib.suppress(Exception):
                eng.destroy(ctid)


# {p}: the pool's first three bytes (10.X.Y), {p6} its IPv6 prefix (fdXX:YY::)
BAD = [
    (["--ipadd", "{p}.300"], "invalid IP address '{p}.300'"),
    (["--ipadd", "{p6}43/64"], "give a single address"),
    (["--ipadd", "10.78.0.5"], "address 10.78.0.5 is outside the IP pool"),
    (["--ipadd", "{p}.41"], "address {p}.41 is in use by VE {x}"),
    (["--ipadd", "{p}.42"], "VE {y} already has address {p}.42"),
    (["--ipadd", "{p}.1"], "is the host's own address"),
    (["--ipadd", "{p}.255"], "is the network or broadcast address"),
    (["--ipadd", "{p}.43", "--ipadd", "{p}.43"], "address {p}.43 is given twice"),
    (["--ipadd", "127.0.0.2"], "not usable as a VE address"),
    (["--ipdel", "{p}.99"], "VE {y} has no address {p}.99"),
    (["--portfwd", "tcp:{port}:22"], "host port tcp:{port} is already forwarded to VE {x}"),
    (["--portfwd", "sctp:2222:22"], "invalid port forward 'sctp:2222:22'"),
    (["--portfwd", "tcp:70000:22"], "ports are numbers from 1 to 65535"),
    (["--portfwd-del", "tcp:2222"], "VE {y} has no port forward tcp:2222"),
    (["--ipdel", "all", "--portfwd", "tcp:2223:22"], "port forwards need an IPv4 address"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_network_input_is_refused_and_changes_nothing(cli, vz_root, stopped_pair, eng, net, args, message):
    x, y, port = stopped_pair
    fill = {"x": x, "y": y, "port": port, "p": net.prefix, "p6": net.prefix6}
    args = [a.format(**fill) for a in args]
    before = (root_tree(vz_root), (vz_root / f"conf/{y}.conf").read_text(), host_objects(eng.layout.tag))
    r = cli("vzctl", "set", str(y), *args, "--save")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: "), r.stderr
    assert message.format(**fill) in lines[0]
    assert (root_tree(vz_root), (vz_root / f"conf/{y}.conf").read_text(), host_objects(eng.layout.tag)) == before


def test_create_refuses_an_exhausted_pool_and_forwards_without_an_address(net, cli, vz_root, stopped_pair, new_ctid,
                                                                           monkeypatch):
    free = new_ctid()
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_IP_POOL", f"{net.ip(40)}/30")  # .41 and .42: both taken by the stopped pair
    r = cli("vzctl", "create", str(free), "--ostemplate", "tiny", "--ipadd", "auto")
    assert r.returncode == 2 and f"no free IPv4 address left in the pool ({net.ip(40)}/30)" in r.stderr
    monkeypatch.delenv("VZ_IP_POOL")
    r = cli("vzctl", "create", str(free), "--ostemplate", "tiny", "--portfwd", "tcp:2224:22")
    assert r.returncode == 2 and "port forwards need an IPv4 address" in r.stderr
    r = cli("vzctl", "create", str(free), "--ostemplate", "tiny", "--ipdel", net.ip(5))
    assert r.returncode == 2 and "a new one has nothing to remove" in r.stderr
    assert root_tree(vz_root) == before


# --- cleanup -------------------------------------------------------------------------------------

def netns_users(netns: str) -> list[int]:
    """Pids of the processes in the network namespace ``netns`` (as readlink shows it)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") == netns:
                out.append(int(pid))
    return out


def test_after_stop_and_destroy_nothing_of_the_ve_remains(eng):
    ctid = 123_456_789  # a long id: its host interface name is shortened
    dev = ifname(eng.layout.tag, ctid)
    assert len(dev) <= 15 and dev.startswith(f"vz{eng.layout.tag}")
    chain = f"VZ-{eng.layout.tag}-{ctid}"
    if eng.exists(ctid):
        eng.destroy(ctid)
    try:
        eng.create(ctid, "tiny", ipadd=["auto", "auto6"], portfwd=[f"tcp:{free_port()}:22"])
        addrs = eng.config(ctid).get_list("IP_ADDRESS")
        for end in ("stop", "destroy"):
            eng.start(ctid, wait_boot=True)
            netns = os.readlink(f"/proc/{init_pid(eng, ctid)}/ns/net")
            assert host_objects(dev) and host_objects(chain)
            assert all(host_objects(a, address=True) for a in addrs)
            if end == "stop":
                eng.stop(ctid)
            else:
                eng.destroy(ctid)
            assert host_objects(dev) == [] and host_objects(chain) == [], end
            assert all(host_objects(a, address=True) == [] for a in addrs), end
            assert netns_users(netns) == [], f"the VE's network namespace is still in use after {end}"
    finally:
        if eng.exists(ctid):
            eng.destroy(ctid)


def test_purge_removes_every_network_object_of_a_root():
    other = free_test_net()
    root = Path(tempfile.mkdtemp(prefix="vznet-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'STORAGE="dir"\nIP_POOL="{other.prefix}.0/28"\nIP6_POOL="{other.pool6}"\n')
    eng = Engine(root, lock_wait=30)
    tag = eng.layout.tag
    try:
        eng.ensure_ready()
        eng.create(150, "tiny", ipadd=["auto", "auto6"], portfwd=[f"tcp:{free_port()}:22"])
        eng.start(150, wait_boot=True)
        assert eng.config(150).get_list("IP_ADDRESS") == [other.ip(2), other.ip6(2)]
        assert ve_pings(eng, 150, other.ip(1)) and ve_pings(eng, 150, other.ip6(1))  # this root's HOST_IPs
        assert host_objects(f"vz{tag}") and host_objects(f"VZ-{tag}-") and host_objects(f"{other.prefix}.")
    finally:
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    assert host_objects(f"vz{tag}") == [] and host_objects(f"VZ-{tag}-") == []
    assert host_objects(f"{other.prefix}.") == [] and host_objects(other.prefix6) == []


# --- proxy ARP / NDP -----------------------------------------------------------------------------

@pytest.fixture
def lan(eng):
    """A stand-in for the host's LAN: a namespace of our own, joined to the host by a veth, with
    a free 10.X.Y.0/24 and fdXX:YY::/64 of its own on the host side (which makes them directly
    connected): yields (pid of the namespace, host interface, the subnets)."""
    o = free_test_net()
    proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    host_if, lan_if = f"t3h{proc.pid}"[:15], "eth0"
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", lan_if, "netns",
                        str(proc.pid)], check=True)
        subprocess.run(f"ip link set {host_if} up && ip addr add {o.ip(1)}/24 dev {host_if} && "
                       f"ip addr add {o.ip6(1)}/64 dev {host_if} nodad", shell=True, check=True)
        subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "sh", "-c",
                        f"ip link set lo up && ip link set {lan_if} up && ip addr add {o.ip(2)}/24 dev {lan_if} && "
                        f"ip addr add {o.ip6(2)}/64 dev {lan_if} nodad && ip route add default via {o.ip(1)} && "
                        f"ip -6 route add default via {o.ip6(1)}"], check=True)
        yield proc.pid, host_if, o
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def test_an_address_from_a_host_subnet_is_answered_by_proxy_arp_and_ndp(net, eng, new_ctid, lan, monkeypatch):
    pid, host_if, o = lan
    monkeypatch.setenv("VZ_IP_POOL", f"{net.pool} {o.pool}")
    monkeypatch.setenv("VZ_IP6_POOL", f"{net.pool6} {o.pool6}")
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[o.ip(50), o.ip6(0x50)])
    eng.start(ctid, wait_boot=True)
    proxies = sh(f"ip neigh show proxy dev {host_if}; ip -6 neigh show proxy dev {host_if}")
    assert o.ip(50) in proxies and o.ip6(0x50) in proxies
    for addr, six in ((o.ip(50), []), (o.ip6(0x50), ["-6"])):
        r = subprocess.run(["nsenter", "-t", str(pid), "-n", BUSYBOX, "ping", *six, "-c", "3", "-W", "3", addr],
                           capture_output=True, text=True)
        state = sh(f"ip neigh show proxy; ip -6 neigh show proxy; ip route get {addr}; "
                   f"nsenter -t {pid} -n ip neigh; iptables -t raw -S; cat /proc/sys/net/ipv4/conf/{host_if}/forwarding")
        assert r.returncode == 0, r.stdout + r.stderr + state  # the LAN reaches the VE through the host
    eng.destroy(ctid)
    assert host_objects(o.ip(50), address=True) == [] and host_objects(o.ip6(0x50), address=True) == []


def test_private_addresses_reach_the_outside_through_nat(net, eng, trio, lan):
    pid, _host_if, o = lan  # "outside": a subnet the host is on, not in the VEs' pool
    a = trio["A"]
    with Capture(pid) as cap:
        assert ve_pings(eng, a, o.ip(2), count=2) and ve_pings(eng, a, o.ip6(2), count=2)
        time.sleep(0.2)
        seen = set(cap.addresses())
    assert {o.ip(1), o.ip6(1)} <= seen  # the outside sees the host's address ...
    assert not seen & {net.ip(21), net.ip6(0x21)}, seen  # ... never the VE's private one


# --- another engine root on the same host -------------------------------------------------------

def vzctl(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vzctl"), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def second_root(net):
    """A second private engine root whose pool overlaps the session root's: .56/29 of it, with the
    same HOST_IP (like two roots on one host that both keep the default pool)."""
    root = Path(tempfile.mkdtemp(prefix="vznet2-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'STORAGE="dir"\nIP_POOL="{net.prefix}.56/29"\nIP6_POOL="{net.pool6}"\n'
                                  f'HOST_IP="{net.ip(1)}"\n')
    eng = Engine(root, lock_wait=30)
    try:
        eng.ensure_ready()
        yield eng
    finally:
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_address(net):
    """An address of the host's own: net.ip(58) on an interface the test makes (a veth pair, both
    ends on the host)."""
    dev = f"t3d{os.getpid()}"[:15]
    try:
        subprocess.run(f"ip link add {dev} type veth peer name t3e{os.getpid()} && ip link set {dev} up && "
                       f"ip addr add {net.ip(58)}/32 dev {dev}", shell=True, check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
        raise
    try:
        yield dev
    finally:
        subprocess.run(["ip", "link", "del", dev], capture_output=True)


def test_an_address_another_root_routes_or_the_host_has_is_refused_and_skipped(eng, net, new_ctid, second_root,
                                                                             own_address):
    other = second_root
    a = new_ctid()
    eng.create(a, "tiny", ipadd=[net.ip(57), net.ip6(0x57)])
    eng.start(a, wait_boot=True)
    veth = ifname(eng.layout.tag, a)
    b = 160
    # Bad input, each refused with one line before anything changes (the other root knows
    # nothing of VE a's addresses: only the host's routes tell).
    for args, message in (
            (["create", str(b), "--ostemplate", "tiny", "--ipadd", net.ip(57)],
             f"{net.ip(57)} is already in use on this host (routed to {veth})"),
            (["create", str(b), "--ostemplate", "tiny", "--ipadd", net.ip6(0x57)],
             f"{net.ip6(0x57)} is already in use on this host (routed to {veth})"),
            (["create", str(b), "--ostemplate", "tiny", "--ipadd", net.ip(58)],
             f"{net.ip(58)} is already in use on this host (an address of its own on {own_address})")):
        before = (root_tree(other.layout.root), host_objects(other.layout.tag))
        r = vzctl(other.layout.root, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
        assert (root_tree(other.layout.root), host_objects(other.layout.tag)) == before
    # auto skips both: .57 (the pool's first) is VE a's, .58 the host's own
    r = vzctl(other.layout.root, "-q", "create", str(b), "--ostemplate", "tiny", "--ipadd", "auto")
    assert r.returncode == 0, r.stderr
    assert other.config(b).get_list("IP_ADDRESS") == [net.ip(59)]
    other.start(b, wait_boot=True)
    assert f"dev {veth} " in sh(f"ip route get {net.ip(57)}")  # VE a's route is still its own
    assert ve_pings(eng, a, net.ip(1)) and ve_pings(other, b, net.ip(1))
    # A stopped VE has no route, so the other root may take its address; then the first root's
    # start refuses it instead of taking the traffic over.
    eng.stop(a, fast=True)
    assert vzctl(other.layout.root, "set", str(b), "--ipadd", net.ip(57), "--save").returncode == 0
    other_veth = ifname(other.layout.tag, b)
    with pytest.raises(InvalidInput, match=rf"{re.escape(net.ip(57))} is already in use on this host "
                                           rf"\(routed to {other_veth}\)"):
        eng.start(a)
    assert not eng.is_running(a) and host_objects(veth) == []
    assert f"dev {other_veth} " in sh(f"ip route get {net.ip(57)}")
    assert ve_pings(other, b, net.ip(1), src=net.ip(57))


# --- traffic totals ------------------------------------------------------------------------------

def traffic(eng: Engine, ctid: int) -> tuple[int, int, int, int]:
    u = eng.usage(ctid)
    return u["net_in_bytes"], u["net_in_packets"], u["net_out_bytes"], u["net_out_packets"]


def burst(addr: str, count: int = 10) -> None:
    """``count`` pings of 1000 bytes from the host to a VE: that much in and out of it."""
    r = subprocess.run([BUSYBOX, "ping", "-c", str(count), "-i", "0.01", "-s", "1000", "-W", "1", addr],
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"{count} packets received" in r.stdout, r.stdout + r.stderr


def grew(before: tuple, after: tuple, count: int = 10) -> bool:
    """Whether ``after`` counts at least one more burst than ``before``, but not two (nothing twice)."""
    diff = [b - a for a, b in zip(before, after, strict=True)]
    return all(count * 1000 <= diff[i] < 2 * count * 1000 for i in (0, 2)) and \
        all(count <= diff[i] < 2 * count for i in (1, 3))


def vzlist_totals(cli, ctid: int) -> list[str]:
    r = cli("vzlist", "-H", "-o", "ctid,traffic_in,traffic_in_total,traffic_out_total,packets_in_total,"
            "packets_out_total", str(ctid))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_traffic_totals_cover_every_run_until_destroy(eng, net, new_ctid, cli):
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[net.ip(71)])
    totals = eng.layout.root / "traffic" / str(ctid)
    assert traffic(eng, ctid) == (0, 0, 0, 0)
    eng.start(ctid, wait_boot=True)
    start = traffic(eng, ctid)
    burst(net.ip(71))
    first = traffic(eng, ctid)
    assert grew(start, first)
    eng.stop(ctid, fast=True)  # (the stop hook runs all the same after a clean shutdown)
    stopped = traffic(eng, ctid)
    assert first <= stopped and stopped[0] - first[0] < 1000 and totals.is_dir()
    # vzlist shows them too (the current-run columns show nothing for a stopped VE)
    assert vzlist_totals(cli, ctid) == [str(ctid), "-", *map(str, (stopped[0], stopped[2], stopped[1], stopped[3]))]
    eng.start(ctid, wait_boot=True)  # a new veth whose counters start at zero: the totals go on
    again = traffic(eng, ctid)
    assert stopped <= again and again[0] - stopped[0] < 1000
    burst(net.ip(71))
    second = traffic(eng, ctid)
    assert grew(again, second)
    shown = vzlist_totals(cli, ctid)
    assert int(shown[2]) >= second[0] > stopped[0] and int(shown[1]) < int(shown[2])  # this run < all runs
    # a reboot inside the VE: LXC makes its network namespace anew, the stop hook keeps the count
    pid = init_pid(eng, ctid)
    eng.exec(ctid, "reboot")
    assert wait_for(lambda: eng.lxc.init_pid(ctid) not in (None, pid), timeout=30), "the VE did not come back"
    assert wait_for(lambda: host_pings(net.ip(71)), timeout=15)
    rebooted = traffic(eng, ctid)
    # (the pings that waited for it to come back: a dozen small ones; a count kept twice would be a burst, >10 kB)
    assert second <= rebooted and rebooted[0] - second[0] < 5000
    burst(net.ip(71))
    assert grew(rebooted, traffic(eng, ctid))
    eng.stop(ctid, fast=True)
    assert not [p for p in totals.iterdir() if p.name != "total"]  # the runs are folded into one file
    eng.destroy(ctid)
    assert not totals.exists()


def test_traffic_totals_survive_a_suspend_and_a_resumed_ve_stopping_by_itself(eng, net, new_ctid):
    try:
        criu.require()
    except Unsupported as e:
        pytest.skip(str(e))
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[net.ip(72)])
    eng.start(ctid, wait_boot=True)
    burst(net.ip(72))
    before = traffic(eng, ctid)
    eng.suspend(ctid)
    suspended = traffic(eng, ctid)
    assert before <= suspended and suspended[0] - before[0] < 1000
    eng.resume(ctid)
    handle = eng.layout.rundir / "netns" / str(ctid)
    assert handle.exists()  # the engine holds a resumed VE's network namespace (see vzengine/network/netns.py)
    burst(net.ip(72))
    resumed = traffic(eng, ctid)
    assert grew(suspended, resumed)
    eng.exec(ctid, "poweroff -f")  # not through the engine: only the stop hook sees it
    assert wait_for(lambda: not eng.is_running(ctid), timeout=30)
    assert wait_for(lambda: not handle.exists(), timeout=5)
    assert str(handle) not in Path("/proc/mounts").read_text()
    end = traffic(eng, ctid)
    assert resumed <= end and end[0] - resumed[0] < 1000
    assert ifname(eng.layout.tag, ctid) not in os.listdir("/sys/class/net")
