"""Suspend and resume with CRIU: processes come back with their memory, files and TCP connections."""

import socket
import time

import pytest

from vzengine import CommandFailed, StateError, checkpoint, criu

pytestmark = pytest.mark.root

COUNTER = ("setsid sh -c 'echo $$ > /run/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /root/counter; "
           "sleep 0.05; done' </dev/null >/dev/null 2>&1 &")

# An echo server (one process per connection) and a client inside the VE that pings it forever.
SERVER = r"""
cat > /root/server.pl <<'PL'
use Socket;
$SIG{CHLD} = 'IGNORE';
socket(S, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
setsockopt(S, SOL_SOCKET, SO_REUSEADDR, 1);
bind(S, sockaddr_in(7001, INADDR_ANY)) or die "bind: $!";
listen(S, 5) or die "listen: $!";
while (1) {
  accept(C, S) or next;
  if (!fork()) { close S; select C; $| = 1; while (<C>) { print C "echo $_" } exit 0 }
  close C;
}
PL
cat > /root/client.pl <<'PL'
use Socket; use IO::Handle;
socket(S, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
connect(S, sockaddr_in(7001, INADDR_LOOPBACK)) or die "connect: $!";
S->autoflush(1);
open(my $log, ">>", "/root/client.log") or die; $log->autoflush(1);
for (my $i = 1; ; $i++) {
  print S "ping $i\n"; my $r = <S>; defined $r or die "connection lost";
  print $log $r; select(undef, undef, undef, 0.05);
}
PL
setsid perl /root/server.pl </dev/null >/dev/null 2>/root/server.err &
echo $! > /run/server.pid
sleep 0.3
setsid perl /root/client.pl </dev/null >/dev/null 2>/root/client.err &
echo $! > /run/client.pid
sleep 0.3
"""


PIDS = "cat /run/counter.pid /run/client.pid /run/server.pid"


def counter(engine, ctid) -> int:
    """The counter's last value, read from the host (so it works while the VE is suspended)."""
    try:
        return int((engine.layout.private(ctid) / "root/counter").read_text() or 0)
    except FileNotFoundError:
        return 0


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_criu_is_new_enough():
    criu.require()
    assert criu.version() >= (4, 2)


def test_it_refuses_systemd_ves_before_trying(engine, cli, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "debian-12")
    r = cli("vzctl", "suspend", str(ctid))
    assert r.returncode == 8, r.stderr
    assert "systemd" in r.stderr and "sysvinit" in r.stderr
    assert not checkpoint.image_dir(engine, ctid).exists()


@pytest.mark.slow
def test_a_sysvinit_ve_comes_back_with_its_counter_and_tcp_connections(net, engine, cli, new_ctid):
    ctid = new_ctid()
    has_net = any("ipadd" in f.params for f in engine.features)
    engine.create(ctid, "debian-12-sysv", **({"ipadd": [net.ip(218)]} if has_net else {}))
    engine.start(ctid, wait_boot=True)
    if not has_net:
        engine.exec(ctid, "ip link set lo up")
    engine.exec(ctid, COUNTER)
    engine.exec(ctid, SERVER)
    log = engine.layout.private(ctid) / "root/client.log"
    wait_for(lambda: log.exists() and log.read_text().count("\n") >= 3)
    pids = engine.exec(ctid, PIDS).stdout.split()
    assert len(pids) == 3
    mounts = engine.exec(ctid, "grep -c lxcfs /proc/mounts").stdout  # lxcfs' FUSE files, if it runs
    host = None
    if has_net:  # a client on the host too, through the VE's routed address
        host = socket.create_connection((net.ip(218), 7001), timeout=10)
        host.sendall(b"from host 1\n")
        assert host.recv(100) == b"echo from host 1\n"

    r = cli("vzctl", "suspend", str(ctid))
    assert r.returncode == 0, r.stderr
    assert not engine.is_running(ctid)
    assert engine.status(ctid).extra.get("suspended") is True
    assert engine.is_suspended(ctid)
    listed = cli("vzlist", "-a", "-H", "-o", "ctid,state", str(ctid)).stdout.split()
    assert listed == [str(ctid), "suspended"]
    frozen, lines = counter(engine, ctid), log.read_text().count("\n")
    time.sleep(0.5)
    assert counter(engine, ctid) == frozen and log.read_text().count("\n") == lines  # nothing runs

    r = cli("vzctl", "resume", str(ctid))
    assert r.returncode == 0, r.stderr
    assert engine.is_running(ctid) and not engine.is_suspended(ctid)
    assert not checkpoint.image_dir(engine, ctid).exists()
    wait_for(lambda: counter(engine, ctid) > frozen + 5)  # the counter goes on from where it was
    assert counter(engine, ctid) < frozen + 200  # ... and did not start again from 1
    wait_for(lambda: log.read_text().count("\n") > lines + 5)  # the connection inside still works
    text = log.read_text().splitlines()
    assert text == [f"echo ping {i}" for i in range(1, len(text) + 1)]
    assert engine.exec(ctid, "cat /root/client.err").stdout == ""
    same = engine.exec(ctid, PIDS).stdout
    assert same.split() == pids  # the same processes, with their PIDs
    assert engine.exec(ctid, "grep -c lxcfs /proc/mounts").stdout == mounts
    assert engine.exec(ctid, "head -1 /proc/meminfo").stdout.startswith("MemTotal:")
    if host is not None:
        host.sendall(b"from host 2\n")
        assert host.recv(100) == b"echo from host 2\n"
        host.close()
        assert net.ip(218) in engine.exec(ctid, "ip -4 addr show eth0").stdout
        assert net.ip(218) not in engine.exec(ctid, "ip -4 addr show lo").stdout


def test_a_busybox_ve_can_be_suspended_too(engine, tiny_ve):
    engine.exec(tiny_ve, COUNTER)
    wait_for(lambda: counter(engine, tiny_ve) > 3)
    engine.suspend(tiny_ve)
    frozen = counter(engine, tiny_ve)
    engine.resume(tiny_ve)
    wait_for(lambda: counter(engine, tiny_ve) > frozen + 3)
    assert counter(engine, tiny_ve) < frozen + 200


def test_a_process_from_outside_the_ve_blocks_a_suspend_and_it_says_so(engine, tiny_ve):
    engine.exec(tiny_ve, "sleep 300 </dev/null >/dev/null 2>&1 &")  # no setsid: its session is outside
    # which process is named depends on timing: the sleep, or lxc-attach's helper still leaving
    with pytest.raises(StateError, match=r"process \d+ \(\S+\) belongs to a session outside"):
        engine.suspend(tiny_ve)
    assert engine.is_running(tiny_ve) and not checkpoint.image_dir(engine, tiny_ve).exists()


def test_a_failed_dump_leaves_the_ve_running_with_its_network(net, engine, new_ctid, monkeypatch):
    ctid = new_ctid()
    has_net = any("ipadd" in f.params for f in engine.features)
    engine.create(ctid, "tiny", **({"ipadd": [net.ip(219)]} if has_net else {}))
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, COUNTER)
    engine.exec(ctid, "sleep 300 </dev/null >/dev/null 2>&1 &")
    monkeypatch.setattr(checkpoint, "_outside_sessions", lambda eng, ctid: [])  # let CRIU find it
    with pytest.raises(CommandFailed, match=f"CRIU could not checkpoint VE {ctid} \\(it keeps running\\)"):
        engine.suspend(ctid)
    assert engine.is_running(ctid) and not engine.is_suspended(ctid)
    assert not checkpoint.image_dir(engine, ctid).exists()
    now = counter(engine, ctid)
    wait_for(lambda: counter(engine, ctid) > now + 3)  # its processes go on
    if has_net:  # and its network is back as it was
        assert net.ip(219) in engine.exec(ctid, "ip -4 addr show eth0").stdout
        assert net.ip(219) not in engine.exec(ctid, "ip -4 addr show lo").stdout
        assert "default via" in engine.exec(ctid, "ip -4 route").stdout


def test_start_boots_a_suspended_ve_afresh_and_destroy_removes_its_images(engine, tiny_ve):
    engine.suspend(tiny_ve)
    images = checkpoint.image_dir(engine, tiny_ve)
    assert images.is_dir()
    engine.start(tiny_ve, wait_boot=True)
    assert not images.exists() and not engine.is_suspended(tiny_ve)
    engine.suspend(tiny_ve)
    engine.destroy(tiny_ve)
    assert not images.exists()


def test_bad_states_are_clear_errors(engine, cli, tiny_ve):
    r = cli("vzctl", "resume", str(tiny_ve))
    assert r.returncode == 5 and f"VE {tiny_ve} is not suspended" in r.stderr
    engine.suspend(tiny_ve)
    r = cli("vzctl", "suspend", str(tiny_ve))
    assert r.returncode == 5 and f"VE {tiny_ve} is already suspended" in r.stderr
    engine.resume(tiny_ve)
    engine.stop(tiny_ve, fast=True)
    r = cli("vzctl", "suspend", str(tiny_ve))
    assert r.returncode == 5 and f"VE {tiny_ve} is not running" in r.stderr

