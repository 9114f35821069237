"""vzmigrate between two engine roots: the destination is a second node in a network namespace of the
test's own (tests/twonode.py), reached over SSH through an sshd the test starts inside that namespace
with keys it generates (never the host's sshd, never root's own keys or known_hosts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_test_net
from tests.engine.conftest import BIN
from tests.sshnode import ALIAS, have_sshd, ssh_node
from tests.twonode import NodeNamespace, make_node
from vzengine import AlreadyExists, InvalidInput, NotFound, VZError
from vzengine.migrate import migrate

pytestmark = pytest.mark.root

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
REMOTE = [sys.executable, "-m", "vzengine.cli.vzmigrate"]


@dataclass
class Dest:
    ns: NodeNamespace
    ssh_config: str  # reaches the node as "vzdst" with the test's key
    nokey_config: str  # the same, with a key the node does not accept

    @property
    def target(self) -> str:
        return f"{ALIAS}:{self.ns.root}"

    def python(self, code: str):
        return self.ns.python(f"import json, os; from vzengine import Engine; eng = Engine(os.environ['VZ_ROOT']); "
                              f"{code}")

    def vzctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.ns.run([str(BIN / "vzctl"), "--root", str(self.ns.root), *map(str, args)], check=False)

    def has_nothing_of(self, ctid: int) -> list[str]:
        """What the destination still holds of VE ctid (empty: nothing)."""
        root = self.ns.root
        left = [str(p) for p in (root / "conf" / f"{ctid}.conf", root / "pool/private" / str(ctid),
                                 root / "migrate" / f"{ctid}.json", root / "pool/snapshots" / str(ctid)) if p.exists()]
        left += [str(p) for p in (root / "pool").glob(f".migrate-{ctid}-*")]
        return left


@pytest.fixture(scope="module")
def dest(net, vz_root, tmp_path_factory):
    if not have_sshd():
        pytest.skip("needs sshd (Debian package openssh-server) to run the destination node's SSH server")
    d = tmp_path_factory.mktemp("migrate")
    with make_node("mig", free_test_net(), net, d) as ns, ssh_node(ns, d) as ssh:
        yield Dest(ns=ns, ssh_config=ssh.ssh_config, nokey_config=ssh.nokey_config)


def _migrate(engine, dest: Dest, ctid: int, **kw):
    return migrate(engine, kw.pop("target", dest.target), ctid, ssh_config=kw.pop("ssh_config", dest.ssh_config),
                   remote_command=REMOTE, **kw)


def _marker(vz_root: Path, ctid: int) -> Path:
    return vz_root / "pool/private" / str(ctid) / "root/migrated-marker"


def _source_leftovers(vz_root: Path, ctid: int) -> list[str]:
    return [str(p) for p in (vz_root / "pool/private").glob(f".{ctid}.migrate-*")]


@pytest.fixture
def moved(dest):
    """VE ids that ended on the destination: destroyed there after the test."""
    ids: list[int] = []
    yield ids
    for ctid in ids:
        dest.vzctl("destroy", ctid)


def test_it_moves_a_stopped_ve_offline_and_it_runs_there(engine, new_ctid, dest, moved, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname="offline.example", ipadd=["auto"])
    addr = engine.config(ctid).get("IP_ADDRESS")
    _marker(vz_root, ctid).parent.mkdir(exist_ok=True)
    _marker(vz_root, ctid).write_text("moved offline\n")
    moved.append(ctid)

    res = _migrate(engine, dest, ctid)

    assert res.mode == "offline" and res.downtime_seconds is None
    assert res.bytes_sent > 0 and res.passes == [res.bytes_sent]
    assert not engine.exists(ctid) and not (vz_root / "pool/private" / str(ctid)).exists()
    assert _source_leftovers(vz_root, ctid) == []
    conf = dest.python(f"c = eng.config({ctid}); print(json.dumps(c.values))")
    assert conf["HOSTNAME"] == "offline.example" and conf["IP_ADDRESS"] == addr
    assert "IDMAP" not in conf  # the destination gives it a host id range of its own
    assert (dest.ns.root / "pool/private" / str(ctid) / "root/migrated-marker").read_text() == "moved offline\n"
    assert not (dest.ns.root / "migrate" / f"{ctid}.json").exists()
    assert dest.vzctl("start", ctid).returncode == 0
    dest.ns.net([BUSYBOX, "ping", "-c", "1", "-W", "3", addr])  # raises if the VE does not answer on its address

    # A second VE of the same template: the template is there now, only the VE's changes travel.
    other = new_ctid()
    engine.create(other, "tiny")
    moved.append(other)
    second = _migrate(engine, dest, other)
    assert second.base_bytes == 0
    assert 0 < second.bytes_sent < max(res.base_bytes, 1 << 20)


def test_it_moves_a_running_ve_by_restart_with_a_file_written_just_before(engine, new_ctid, dest, moved, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny", ipadd=["auto"], firewall_rule_add=["drop tcp 23"])
    addr = engine.config(ctid).get("IP_ADDRESS")
    engine.start(ctid, wait_boot=True)
    moved.append(ctid)
    subprocess.run([BUSYBOX, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr], check=True, capture_output=True)
    traffic = engine.usage(ctid)["net_in_bytes"]
    assert traffic > 0
    engine.exec(ctid, "mkdir -p /root && echo written-while-running > /root/migrated-marker")

    res = _migrate(engine, dest, ctid)

    assert res.mode == "restart" and res.downtime_seconds is not None and len(res.passes) == 2
    assert not engine.exists(ctid)
    there = dest.python(f"print(json.dumps([eng.status({ctid}).status, eng.usage({ctid})['net_in_bytes'], "
                        f"eng.config({ctid}).get('FIREWALL_RULES')]))")
    assert there[0] == "running" and there[1] >= traffic and there[2] == "drop tcp 23"
    assert (dest.ns.root / "pool/private" / str(ctid) / "root/migrated-marker").read_text() == \
        "written-while-running\n"
    dest.ns.net([BUSYBOX, "ping", "-c", "1", "-W", "3", addr])


def test_it_moves_snapshots_when_asked_and_refuses_to_drop_them(engine, new_ctid, dest, moved, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    _marker(vz_root, ctid).parent.mkdir(exist_ok=True)
    _marker(vz_root, ctid).write_text("in the snapshot\n")
    engine.snapshot(ctid, "before")
    _marker(vz_root, ctid).write_text("after the snapshot\n")
    with pytest.raises(InvalidInput, match="--with-snapshots"):
        _migrate(engine, dest, ctid)
    assert dest.has_nothing_of(ctid) == []
    moved.append(ctid)

    _migrate(engine, dest, ctid, with_snapshots=True)

    snap = dest.ns.root / "pool/snapshots" / str(ctid) / "before"
    assert (snap / "root/migrated-marker").read_text() == "in the snapshot\n"
    assert (dest.ns.root / "pool/private" / str(ctid) / "root/migrated-marker").read_text() == "after the snapshot\n"
    names = dest.python(f"print(json.dumps([s.name for s in eng.snapshot_list({ctid}, sizes=False)]))")
    assert names == ["before"]


RUNNING_STEPS = ["migrate:probe", "migrate:snapshot", "migrate:dst-receive", "migrate:send", "migrate:stopped",
                 "migrate:dst-commit", "migrate:dst-start", "migrate:landed"]


@pytest.mark.parametrize("step", RUNNING_STEPS)
def test_a_failure_at_each_step_leaves_the_running_ve_where_it_was(engine, new_ctid, dest, vz_root, monkeypatch,
                                                                    step):
    ctid = new_ctid()
    engine.create(ctid, "tiny", ipadd=["auto"])
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, "mkdir -p /root && echo still-here > /root/migrated-marker")
    before = engine.config(ctid).values
    monkeypatch.setenv("VZ_FAIL_AT", step)

    with pytest.raises(VZError, match=f"injected failure at {step}"):
        _migrate(engine, dest, ctid)

    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "running"
    assert engine.config(ctid).values == before
    assert engine.exec(ctid, "cat /root/migrated-marker").stdout == "still-here\n"
    assert _source_leftovers(vz_root, ctid) == []
    assert dest.has_nothing_of(ctid) == []


@pytest.mark.parametrize("step", ["migrate:dst-receive", "migrate:dst-commit", "migrate:landed"])
def test_a_failure_leaves_a_stopped_ve_stopped_where_it_was(engine, new_ctid, dest, vz_root, monkeypatch, step):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    monkeypatch.setenv("VZ_FAIL_AT", step)
    with pytest.raises(VZError, match="injected failure"):
        _migrate(engine, dest, ctid)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "stopped"
    assert _source_leftovers(vz_root, ctid) == [] and dest.has_nothing_of(ctid) == []


def test_keep_dst_keeps_the_destinations_copy_stopped_when_the_end_fails(engine, new_ctid, dest, moved, monkeypatch):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    engine.start(ctid, wait_boot=True)
    moved.append(ctid)
    monkeypatch.setenv("VZ_FAIL_AT", "migrate:landed")
    with pytest.raises(VZError, match="injected failure"):
        _migrate(engine, dest, ctid, keep_dst=True)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "running"
    assert dest.python(f"print(json.dumps(eng.status({ctid}).status))") == "stopped"


def _cli(dest: Dest, vz_root: Path, *args: str, ssh_config: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vzengine.cli.vzmigrate", "--root", str(vz_root), "--ssh-config",
                           ssh_config or dest.ssh_config, "--remote-command", " ".join(REMOTE), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["unknown destination", "same node", "no key", "bad root", "no root there",
                                  "bad ctid", "no such VE"])
def test_bad_input_is_refused_with_one_line_and_changes_nothing(engine, new_ctid, dest, vz_root, case):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    state = engine.status(ctid).status
    target, config, who, extra = dest.target, None, str(ctid), []
    expect = {
        "unknown destination": "cannot reach no-such-node.invalid",
        "same node": "this node's own engine root",
        "no key": "cannot log in to vzdst as root with a key",
        "bad root": "invalid destination root",
        "no root there": "no engine root at /var/tmp/no-such-vz-root",
        "bad ctid": "invalid VE id",
        "no such VE": "does not exist",
    }[case]
    if case == "unknown destination":
        target = "no-such-node.invalid"
    elif case == "same node":
        target = f"vzdst:{vz_root}"
    elif case == "no key":
        config = dest.nokey_config
    elif case == "bad root":
        target = "vzdst:relative/root"
    elif case == "no root there":
        target = "vzdst:/var/tmp/no-such-vz-root"
    elif case == "bad ctid":
        who = "12x"
    elif case == "no such VE":
        who = str(new_ctid())

    proc = _cli(dest, vz_root, "-q", *extra, target, who, ssh_config=config)

    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzmigrate: ") and expect in lines[0], proc.stderr
    assert engine.status(ctid).status == state
    assert _source_leftovers(vz_root, ctid) == [] and dest.has_nothing_of(ctid) == []
    assert not Path("/var/tmp/no-such-vz-root").exists()


def test_it_refuses_a_ve_id_the_destination_already_has(engine, new_ctid, dest, moved):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    assert dest.vzctl("create", ctid, "--ostemplate", "tiny").returncode == 0
    moved.append(ctid)
    with pytest.raises(AlreadyExists, match=f"VE {ctid} already exists on vzdst"):
        _migrate(engine, dest, ctid)
    assert engine.exists(ctid)


def test_the_cli_prints_json(engine, new_ctid, dest, moved, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    moved.append(ctid)
    proc = _cli(dest, vz_root, "-q", "--json", dest.target, str(ctid))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ctid"] == ctid and out["mode"] == "offline" and out["verified"]["entries"] > 0
    with pytest.raises(NotFound):
        engine.config(ctid)


def test_the_destination_refuses_a_tree_that_differs_from_the_sources(engine, new_ctid, dest, vz_root, monkeypatch):
    """What arrived is counted on the destination and compared with the source's count before the VE is
    committed there: a transfer that lost or gained anything (here: a source count that does not match)
    fails the migration, and the VE stays where it was."""
    import vzengine.migrate

    ctid = new_ctid()
    engine.create(ctid, "tiny")
    monkeypatch.setattr(vzengine.migrate, "tree_summary", lambda path: {"entries": 1, "bytes": 1})
    with pytest.raises(VZError, match="differs from the source's"):
        _migrate(engine, dest, ctid)
    assert engine.status(ctid).status == "stopped"
    assert _source_leftovers(vz_root, ctid) == [] and dest.has_nothing_of(ctid) == []


def test_it_removes_what_a_killed_migration_left_on_the_source(engine, new_ctid, dest, moved, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    stale = vz_root / "pool/private" / f".{ctid}.migrate-0123456789ab-1"
    engine.storage.clone(vz_root / "pool/private" / str(ctid), stale, readonly=True)
    moved.append(ctid)
    _migrate(engine, dest, ctid)
    assert not stale.exists()


# --- live migration (--online): CRIU dump here, resume there -----------------------------------------------
COUNTER = ("setsid sh -c 'echo $$ > /run/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /root/counter; "
           "sleep 0.05; done' </dev/null >/dev/null 2>&1 &")
ECHO_SERVER = "setsid nc -ll -p 7001 -e cat </dev/null >/dev/null 2>&1 &"
# A client that talks to the VE's echo server forever: one line out, the same line back, logged.
CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7001), timeout=30)
log = open(sys.argv[2], "a", buffering=1)
i = 0
while True:
    i += 1
    s.sendall(f"ping {i}\n".encode())
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            log.write("connection lost\n")
            sys.exit(1)
        got += chunk
    log.write(got.decode())
    time.sleep(0.05)
"""


def _counter(root: Path, ctid: int) -> int:
    try:
        return int((root / "pool/private" / str(ctid) / "root/counter").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _wait(cond, timeout: float = 20.0, what: str = "a condition") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def live_ve(engine, new_ctid, vz_root):
    """A running tiny (BusyBox init) VE with an address, a counter and an echo server; destroyed here after."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", ipadd=["auto"])
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, COUNTER)
    engine.exec(ctid, ECHO_SERVER)
    _wait(lambda: _counter(vz_root, ctid) > 3, what="the counter")
    yield ctid
    if engine.exists(ctid):
        engine.destroy(ctid)


def test_it_moves_a_running_ve_live_and_its_processes_and_tcp_connection_go_on(engine, live_ve, dest, moved,
                                                                               vz_root, tmp_path):
    ctid = live_ve
    addr = engine.config(ctid).get("IP_ADDRESS")
    idmap_here = engine.config(ctid).get("IDMAP")
    pid = engine.exec(ctid, "cat /run/counter.pid").stdout.strip()
    log = tmp_path / "client.log"
    client = subprocess.Popen(["nsenter", f"--net=/run/netns/{dest.ns.netns}", sys.executable, "-c", CLIENT, addr,
                               str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    moved.append(ctid)
    try:
        _wait(lambda: log.exists() and log.read_text().count("\n") >= 3, what="the client's first echoes")

        res = _migrate(engine, dest, ctid, online=True)

        assert res.mode == "live" and res.downtime_seconds is not None and len(res.passes) == 2
        assert not engine.exists(ctid) and _source_leftovers(vz_root, ctid) == []
        there = dest.python(f"print(json.dumps([eng.status({ctid}).status, eng.config({ctid}).get('IDMAP')]))")
        assert there == ["running", idmap_here]  # CRIU restored the id map it was dumped with
        frozen = _counter(dest.ns.root, ctid)
        assert frozen > 3
        _wait(lambda: _counter(dest.ns.root, ctid) > frozen + 5, what="the counter on the destination")
        assert _counter(dest.ns.root, ctid) < frozen + 200  # it went on, it did not start again from 1
        assert dest.vzctl("exec", ctid, "cat /run/counter.pid").stdout.strip() == pid  # the same process
        lines = log.read_text().count("\n")
        _wait(lambda: log.read_text().count("\n") > lines + 5, what="the client's echoes after the move")
        assert client.poll() is None
        text = log.read_text().splitlines()
        assert text == [f"ping {i}" for i in range(1, len(text) + 1)]  # no line lost, none twice
        assert not (dest.ns.root / "dump" / str(ctid)).exists()
        assert list((dest.ns.root / "dump").glob(f".migrate-{ctid}-*")) == []
    finally:
        client.kill()
        client.wait()


@pytest.mark.parametrize("case", ["systemd", "console"])
def test_a_ve_that_cannot_move_live_is_refused_with_the_reason_and_the_restart_hint(engine, new_ctid, dest,
                                                                                   vz_root, case):
    ctid = new_ctid()
    engine.create(ctid, "debian-12" if case == "systemd" else "tiny")
    try:
        engine.start(ctid, wait_boot=case != "systemd")
        if case == "console":  # no setsid: its session leader is outside the VE, as an open console's is
            engine.exec(ctid, "sleep 300 </dev/null >/dev/null 2>&1 &")
        why = {"systemd": "CRIU cannot restore the tmpfs mounts systemd makes",
               "console": "belongs to a session outside it"}[case]

        proc = _cli(dest, vz_root, "-q", "--online", dest.target, str(ctid))

        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and "without --online (restart migration" in lines[0], proc.stderr
        assert engine.status(ctid).status == "running"
        assert _source_leftovers(vz_root, ctid) == [] and dest.has_nothing_of(ctid) == []
        assert not (vz_root / "dump" / str(ctid)).exists()
    finally:
        engine.destroy(ctid)


LIVE_STEPS = ["migrate:dumped", "migrate:images", "migrate:dst-images", "migrate:dst-commit", "migrate:dst-resume",
              "migrate:landed"]


@pytest.mark.parametrize("step", LIVE_STEPS)
def test_a_failure_after_the_dump_resumes_the_ve_where_it_was(engine, live_ve, dest, vz_root, monkeypatch, step):
    ctid = live_ve
    pid = engine.exec(ctid, "cat /run/counter.pid").stdout.strip()
    before = engine.config(ctid).values
    monkeypatch.setenv("VZ_FAIL_AT", step)

    with pytest.raises(VZError, match=f"injected failure at {step}"):
        _migrate(engine, dest, ctid, online=True)

    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "running" and not engine.is_suspended(ctid)
    assert engine.config(ctid).values == before  # its own id range again
    now = _counter(vz_root, ctid)
    _wait(lambda: _counter(vz_root, ctid) > now + 3, what="the counter back on the source")
    assert engine.exec(ctid, "cat /run/counter.pid").stdout.strip() == pid  # resumed, not booted afresh
    assert _source_leftovers(vz_root, ctid) == [] and not (vz_root / "dump" / str(ctid)).exists()
    assert dest.has_nothing_of(ctid) == []
    assert not (dest.ns.root / "dump" / str(ctid)).exists()
    assert list((dest.ns.root / "dump").glob(f".migrate-{ctid}-*")) == []


def test_keep_dst_after_a_live_failure_keeps_a_stopped_copy_that_would_boot_afresh(engine, live_ve, dest, moved,
                                                                                  monkeypatch):
    ctid = live_ve
    pid = engine.exec(ctid, "cat /run/counter.pid").stdout.strip()
    moved.append(ctid)
    monkeypatch.setenv("VZ_FAIL_AT", "migrate:landed")
    with pytest.raises(VZError, match="injected failure"):
        _migrate(engine, dest, ctid, online=True, keep_dst=True)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "running"
    assert engine.exec(ctid, "cat /run/counter.pid").stdout.strip() == pid
    there = dest.python(f"print(json.dumps([eng.status({ctid}).status, eng.is_suspended({ctid}), "
                        f"eng.config({ctid}).get('IDMAP')]))")
    assert there == ["stopped", False, ""]  # not resumable there, and the source's id range is not its own


def test_live_is_refused_when_the_ves_id_range_is_taken_on_the_destination(engine, live_ve, dest, vz_root,
                                                                           monkeypatch):
    """Here both roots share one id allocator, so the range is seen held by another root's VE 'elsewhere'."""
    import vzengine.migrate

    ctid = live_ve
    pid = engine.exec(ctid, "cat /run/counter.pid").stdout.strip()
    monkeypatch.setattr(vzengine.migrate, "_root_path", lambda eng: "/var/tmp/another-root")
    with pytest.raises(VZError, match=r"which another VE holds on vzdst.*without --online \(restart migration\)"):
        _migrate(engine, dest, ctid, online=True)
    assert engine.status(ctid).status == "running" and not engine.is_suspended(ctid)
    assert engine.exec(ctid, "cat /run/counter.pid").stdout.strip() == pid
    assert _source_leftovers(vz_root, ctid) == [] and dest.has_nothing_of(ctid) == []


def test_a_live_failure_whose_undo_the_destination_does_not_confirm_leaves_the_ve_suspended(
        engine, live_ve, dest, moved, monkeypatch):
    """The destination resumed the VE, then the migration failed and the destination did not answer the
    abort (the link went down, say): resuming here too could run the VE twice, so it stays suspended."""
    import vzengine.migrate

    ctid = live_ve
    moved.append(ctid)
    call = vzengine.migrate.Remote.call

    def unreachable_abort(self, op, *args, **kw):
        if op == "abort":
            raise vzengine.migrate.CommandFailed("cannot reach vzdst over SSH (test)")
        return call(self, op, *args, **kw)

    monkeypatch.setattr(vzengine.migrate.Remote, "call", unreachable_abort)
    monkeypatch.setenv("VZ_FAIL_AT", "migrate:landed")
    with pytest.raises(VZError, match=f"injected failure at migrate:landed; .* stays suspended here rather than risk "
                                      f"running twice.*vzctl resume {ctid}"):
        _migrate(engine, dest, ctid, online=True)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.is_suspended(ctid) and not engine.is_running(ctid)
    assert dest.python(f"print(json.dumps(eng.status({ctid}).status))") == "running"
