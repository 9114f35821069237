"""The host is not a service to its VEs; port forwards never shadow the host's loopback services.

Every packet here stays on this machine: between the host, VEs of the test root (its own pool,
``net``) and a network namespace this module makes (a free 10.X.Y.0/24 of its own) standing in
for a client outside. The servers the VEs attack are started by the tests themselves, on free
ports, and report every connection they see.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_test_net
from tests.engine.conftest import running_tiny_ves
from tests.engine.test_network import BUSYBOX, host_objects, sh, tcp_banner, ve_pings, wait_for
from vzengine import Engine
from vzengine.network import ifname

pytestmark = pytest.mark.root

_ids = itertools.count(210_000 + (os.getpid() % 1000) * 100)


class HostServer:
    """TCP and UDP servers on the host, bound to 0.0.0.0 and [::] (v6 only) on one free port:
    they greet with ``banner`` and note the peer of every connection and datagram."""

    def __init__(self, banner: bytes = b"HOST-SERVER\n", bind4: str = "0.0.0.0", bind6: str = "::",
                 port: int | None = None):
        self.banner, self.seen = banner, []
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        while True:
            try:
                self._bind(bind4, bind6, port)
                break
            except OSError:  # the v6 or UDP side of a port free for v4 TCP was taken: another
                for s in self.socks:
                    s.close()
                self.socks = []
                if port is not None:
                    raise
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _bind(self, bind4: str, bind6: str, port: int | None) -> None:
        tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(tcp4)
        tcp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp4.bind((bind4, port or 0))
        self.port = tcp4.getsockname()[1]
        tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.socks.append(tcp6)
        tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tcp6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp6.bind((bind6, self.port))
        for fam, addr in ((socket.AF_INET, bind4), (socket.AF_INET6, bind6)):
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            self.socks.append(udp)
            if fam == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            udp.bind((addr, self.port))
        tcp4.listen(64)
        tcp6.listen(64)

    def _serve(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        while not self._stop.is_set():
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, peer = s.accept()
                    self.seen.append(("tcp", peer[0]))
                    with contextlib.suppress(OSError), conn:
                        conn.sendall(self.banner)
                else:
                    _data, peer = s.recvfrom(2048)
                    self.seen.append(("udp", peer[0]))
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in self.socks:
            s.close()


@pytest.fixture
def host_server():
    srv = HostServer()
    try:
        yield srv
    finally:
        srv.close()


def host_addresses() -> list[str]:
    """The host's own global addresses (every interface, this root's veths included), IPv4 and IPv6."""
    out = []
    for line in sh("ip -o addr show scope global").splitlines():
        fields = line.split()
        if "tentative" in line or "dadfailed" in line:
            continue
        out.append(fields[3].split("/")[0])
    return sorted(set(out))


@pytest.fixture(scope="module")
def eng(vz_root):
    return Engine(vz_root, lock_wait=30)


@pytest.fixture(scope="module")
def pair(net, eng):
    """Two running tiny VEs, A and B, each with an IPv4 and an IPv6 address."""
    with running_tiny_ves(eng, _ids, {"A": [net.ip(61), net.ip6(0x61)], "B": [net.ip(62), net.ip6(0x62)]}) as ves:
        yield ves


@pytest.fixture
def outside():
    """A network namespace of our own joined to the host by a veth (host side ``o.ip(1)``, the
    namespace ``o.ip(2)``): a client outside the host. Yields (pid in it, the subnet)."""
    o = free_test_net()
    proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    host_if = f"t13h{proc.pid}"[:15]
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns",
                        str(proc.pid)], check=True)
        subprocess.run(f"ip link set {host_if} up && ip addr add {o.ip(1)}/24 dev {host_if}", shell=True, check=True)
        subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "sh", "-c",
                        f"ip link set lo up && ip link set eth0 up && ip addr add {o.ip(2)}/24 dev eth0 && "
                        f"ip route add default via {o.ip(1)}"], check=True)
        yield proc.pid, o
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def ve_connects(eng: Engine, ctid: int, addr: str, port: int) -> str:
    """What a TCP client inside the VE reads from addr:port ("" when it cannot connect)."""
    return eng.exec(ctid, f"nc -w 2 {addr} {port} </dev/null 2>/dev/null").stdout


def ve_sends_udp(eng: Engine, ctid: int, addr: str, port: int) -> None:
    eng.exec(ctid, f"echo ping | nc -u -w 1 {addr} {port} 2>/dev/null")


def rejected(fw_family: str, tag: str) -> int:
    """Packets the root's VZ-T-IN chain has rejected so far (iptables or ip6tables)."""
    out = sh(f"{fw_family} -w -L VZ-{tag}-IN -v -x -n")
    for line in out.splitlines():
        if "REJECT" in line:
            return int(line.split()[0])
    return 0


# --- the host is out of reach --------------------------------------------------------------------

def test_a_ve_cannot_reach_a_host_server_bound_to_any_address(net, eng, pair, host_server):
    a, b = pair["A"], pair["B"]
    port = host_server.port
    # the server works: the host reaches it at the VEs' gateway address and at its own addresses
    assert (tcp_banner(net.ip(1), port) or b"").startswith(b"HOST-SERVER")
    assert (tcp_banner(net.ip6(1), port) or b"").startswith(b"HOST-SERVER")
    host_server.seen.clear()
    targets = [net.ip(1), net.ip6(1), "fe80::1%eth0", *host_addresses()]
    before = (rejected("iptables", eng.layout.tag), rejected("ip6tables", eng.layout.tag))
    for addr in targets:
        assert ve_connects(eng, a, addr, port) == "", addr
        ve_sends_udp(eng, a, addr, port)
    time.sleep(0.5)
    assert host_server.seen == [], host_server.seen  # not one connection, not one datagram
    after = (rejected("iptables", eng.layout.tag), rejected("ip6tables", eng.layout.tag))
    assert after[0] > before[0] and after[1] > before[1]  # refused by the host's rules, both families
    # what the engine keeps: the VE pings its gateway, reaches its neighbour, and the host reaches it
    assert ve_pings(eng, a, net.ip(1)) and ve_pings(eng, a, net.ip6(1))
    assert ve_pings(eng, a, net.ip(62)) and ve_pings(eng, a, net.ip6(0x62))
    r = eng.exec(b, "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && httpd -p 8081 -h /tmp/www")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: (tcp_banner(net.ip(62), 8081) or b"").startswith(b"HTTP/1"))  # host -> VE
    assert "HTTP/1" in eng.exec(a, f"echo 'GET / HTTP/1.0' | nc -w 2 {net.ip(62)} 8081").stdout  # VE -> VE


def test_the_host_rules_are_the_roots_own_and_leave_other_traffic_alone(eng, pair):
    tag = eng.layout.tag
    rules = sh("iptables-save -t filter")
    assert f"-A INPUT -i vz{tag}+ -j VZ-{tag}-IN" in rules
    assert f"-A VZ-{tag}-IN -j REJECT --reject-with icmp-admin-prohibited" in rules
    assert f"-A INPUT -i vz{tag}+ -j VZ-{tag}-IN" in sh("ip6tables-save -t filter").replace("ip6", "ip")
    # the jump is first in INPUT: no rule of the host's own can let a VE in before it
    first = [ln for ln in rules.splitlines() if ln.startswith("-A INPUT ")][:2]
    assert any(f"-j VZ-{tag}-IN" in ln for ln in first), first
    # no loopback DNAT, no route_localnet
    assert "127.0.0.0/8 -o" not in sh("iptables-save -t nat")
    assert f"-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j VZ-{tag}-PF" in sh("iptables-save -t nat")


# --- port forwards -------------------------------------------------------------------------------

def test_a_port_forward_works_from_outside_and_never_shadows_host_loopback(net, cli, eng, pair, outside):
    a, b = pair["A"], pair["B"]
    pid, o = outside
    r = eng.exec(a, "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
    assert r.returncode == 0, r.stderr
    probe = HostServer()  # a port free for TCP and UDP, v4 and v6 alike
    port = probe.port
    probe.close()
    r = cli("vzctl", "set", str(a), "--portfwd", f"tcp:{port}:8080", "--save")
    assert r.returncode == 0, r.stderr
    # Then the host starts a loopback-only service on the same port (the panel on 127.0.0.1, say)
    loop = HostServer(banner=b"HOST-LOOPBACK\n", bind4="127.0.0.1", bind6="::1", port=port)
    try:
        assert (tcp_banner("127.0.0.1", port) or b"").startswith(b"HOST-LOOPBACK")  # the host's own
        assert (tcp_banner("::1", port) or b"").startswith(b"HOST-LOOPBACK")
        assert _read_sysctl(f"/proc/sys/net/ipv4/conf/{ifname(eng.layout.tag, a)}/route_localnet") == "0"
        # from outside, at the host's address on that link: the VE
        client = subprocess.run(["nsenter", "-t", str(pid), "-n", BUSYBOX, "sh", "-c",
                                 f"echo 'GET / HTTP/1.0' | {BUSYBOX} nc -w 3 {o.ip(1)} {port}"],
                                capture_output=True, text=True, timeout=30)
        assert "HTTP/1" in client.stdout, client.stdout + client.stderr
        # from the host at one of its real addresses, and from another VE at the gateway: the VE
        assert (tcp_banner(net.ip(1), port) or b"").startswith(b"HTTP/1")
        assert "HTTP/1" in eng.exec(b, f"echo 'GET / HTTP/1.0' | nc -w 2 {net.ip(1)} {port}").stdout
        assert {peer for _, peer in loop.seen} >= {"127.0.0.1", "::1"}  # and it saw them itself
    finally:
        loop.close()
        cli("vzctl", "set", str(a), "--portfwd-del", "all", "--save")
    assert host_objects(f"--dport {port} ") == []


def _read_sysctl(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_the_host_rules_come_back_at_start_when_someone_flushed_them(eng, pair, host_server):
    tag, a = eng.layout.tag, pair["A"]
    jump = f"-A INPUT -i vz{tag}+ -j VZ-{tag}-IN"
    for tool in ("iptables", "ip6tables"):  # an admin's firewall reload, say
        subprocess.run([tool, "-w", "-D", *jump[3:].split()], check=True)
    eng.stop(a)
    eng.start(a, wait_boot=True)
    for tool in ("iptables", "ip6tables"):
        saved = sh(f"{tool}-save")
        assert saved.count(jump) == 1, tool
        assert saved.count(f"-j VZ-{tag}-PF") == 2 and saved.count(f"-j VZ-{tag}-FWD") == 1, tool  # no duplicates
    host_server.seen.clear()
    assert ve_connects(eng, a, _gateway(eng, a), host_server.port) == ""
    assert host_server.seen == []


def _gateway(eng: Engine, ctid: int) -> str:
    """The VE's IPv4 gateway (the host's HOST_IP), as its routing table says."""
    return eng.exec(ctid, "ip -4 route show default").stdout.split()[2]


# --- the rules go with the root ------------------------------------------------------------------

def test_stop_and_destroy_remove_the_ves_rules_and_purge_the_roots():
    other = free_test_net()
    root = Path(tempfile.mkdtemp(prefix="vzfw-", dir="/var/tmp"))  # traversable by the VEs' root
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'STORAGE="dir"\nIP_POOL="{other.pool}"\nIP6_POOL="{other.pool6}"\n'
                                  'HOST_PORTS="tcp:1"\n')
    eng = Engine(root, lock_wait=30)
    tag = eng.layout.tag
    try:
        eng.ensure_ready()
        eng.create(151, "tiny", ipadd=["auto", "auto6"], rate="20M", conntrack="100")
        eng.start(151, wait_boot=True)
        assert host_objects(f"VZ-{tag}-IN") and host_objects(f"VZ-{tag}-151")
        assert f"-A VZ-{tag}-IN -p tcp -m tcp --dport 1 -j ACCEPT" in sh("iptables-save -t filter")
        assert os.path.exists(f"/sys/class/net/vz{tag}z47")  # its ifb (151 in base 36)
        eng.stop(151)
        assert host_objects(f"VZ-{tag}-151") == [] and not os.path.exists(f"/sys/class/net/vz{tag}z47")
        eng.start(151, wait_boot=True)
        assert host_objects(f"VZ-{tag}-151")
        eng.destroy(151)
        assert host_objects(f"VZ-{tag}-151") == [] and not os.path.exists(f"/sys/class/net/vz{tag}z47")
        assert host_objects(f"VZ-{tag}-IN")
        eng.create(152, "tiny", ipadd=["auto"], rate="20M")
        eng.start(152, wait_boot=True)
    finally:
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    assert host_objects(f"VZ-{tag}-") == [] and host_objects(f"vz{tag}") == []
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(f"vz{tag}")]


# --- bridged interfaces --------------------------------------------------------------------------

def _bridge_nf() -> bool:
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@pytest.fixture
def host_lan():
    """A bridge of our own on which the host has an address, ``o.ip(1)`` (the host on a LAN)."""
    o = free_test_net()
    bridge = f"t13b{os.getpid() % 100_000}"
    try:
        subprocess.run(f"ip link add {bridge} type bridge && ip link set {bridge} up && "
                       f"ip addr add {o.ip(1)}/24 dev {bridge}", shell=True, check=True)
        yield bridge, o
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.mark.skipif(not _bridge_nf(), reason="br_netfilter does not pass bridged frames to iptables here")
def test_a_bridged_ve_cannot_reach_the_host_on_that_lan_either(cli, eng, pair, host_lan, host_server):
    a = pair["A"]
    bridge, o = host_lan
    r = cli("vzctl", "set", str(a), "--netif_add", f"eth1,,,,{bridge}", "--save")
    assert r.returncode == 0, r.stderr
    try:
        r = eng.exec(a, f"ip addr add {o.ip(50)}/24 dev eth1 && mkdir -p /tmp/www && httpd -p 8082 -h /tmp/www")
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: (tcp_banner(o.ip(50), 8082) or b"").startswith(b"HTTP/1"))  # the host reaches it
        host_server.seen.clear()
        before = rejected("iptables", eng.layout.tag)
        assert ve_connects(eng, a, o.ip(1), host_server.port) == ""
        ve_sends_udp(eng, a, o.ip(1), host_server.port)
        time.sleep(0.5)
        assert host_server.seen == []
        assert rejected("iptables", eng.layout.tag) > before  # by the root's rules (the physdev jump)
        assert ve_pings(eng, a, o.ip(1))  # pings, as on the routed side
    finally:
        cli("vzctl", "set", str(a), "--netif_del", "all", "--save")
