"""Snapshots, clones and reinstall on real VEs: roll back, copy with a new identity, start afresh."""

import json
import os
import subprocess

import pytest

from tests.engine.conftest import root_tree
from vzengine import CommandFailed, Engine, NotFound, Unsupported

pytestmark = pytest.mark.root


def read(engine, ctid, path):
    return engine.exec(ctid, f"cat {path}").stdout


def test_it_rolls_a_running_ve_back_to_a_snapshot(engine, cli, tiny_ve, vz_root):
    engine.exec(tiny_ve, "echo before > /root/state")
    r = cli("vzctl", "snapshot", str(tiny_ve), "--name", "before-upgrade", "--description", "known good")
    assert r.returncode == 0, r.stderr
    assert engine.is_running(tiny_ve)  # a snapshot does not stop the VE
    engine.exec(tiny_ve, "echo after > /root/state; echo junk > /root/new-file")

    r = cli("vzctl", "snapshot-list", str(tiny_ve), "--json")
    snaps = json.loads(r.stdout)
    assert [s["name"] for s in snaps] == ["before-upgrade"]
    assert snaps[0]["description"] == "known good" and snaps[0]["ve_state"] == "running"
    assert snaps[0]["referenced"] > 1_000_000  # the busybox tree, from the snapshot's qgroup
    assert snaps[0]["created"]
    assert engine.status(tiny_ve).extra["snapshots"] == 1

    r = cli("vzctl", "snapshot-switch", str(tiny_ve), "--name", "before-upgrade")
    assert r.returncode == 0, r.stderr
    assert "stopping it" in r.stderr and "starting VE" in r.stderr  # it says what it did
    engine.wait_booted(tiny_ve)
    assert read(engine, tiny_ve, "/root/state") == "before\n"
    assert engine.exec(tiny_ve, "test -e /root/new-file").returncode == 1
    # the snapshot itself is untouched, so switching twice works
    engine.exec(tiny_ve, "echo again > /root/state")
    engine.snapshot_switch(tiny_ve, "before-upgrade")
    assert read(engine, tiny_ve, "/root/state") == "before\n"

    r = cli("vzctl", "snapshot-delete", str(tiny_ve), "before-upgrade")
    assert r.returncode == 0, r.stderr
    assert engine.snapshot_list(tiny_ve) == []
    assert not (vz_root / f"pool/snapshots/{tiny_ve}/before-upgrade").exists()
    assert not (vz_root / f"pool/snapshots/{tiny_ve}/.before-upgrade.json").exists()


def test_a_switch_of_a_stopped_ve_leaves_it_stopped(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    private = engine.layout.private(ctid)
    (private / "root/f").write_text("one\n")
    engine.snapshot(ctid, "one")
    (private / "root/f").write_text("two\n")
    engine.snapshot_switch(ctid, "one")
    assert (private / "root/f").read_text() == "one\n"
    assert not engine.is_running(ctid)


def test_a_failed_switch_puts_the_old_root_back_and_the_ve_running(engine, tiny_ve, monkeypatch, vz_root):
    engine.exec(tiny_ve, "echo v1 > /root/state")
    engine.snapshot(tiny_ve, "v1")
    engine.exec(tiny_ve, "echo v2 > /root/state")
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_FAIL_AT", "snapshot-switch:after-swap")
    with pytest.raises(CommandFailed, match="injected failure"):
        engine.snapshot_switch(tiny_ve, "v1")
    assert engine.is_running(tiny_ve)
    engine.wait_booted(tiny_ve)
    assert read(engine, tiny_ve, "/root/state") == "v2\n"
    assert root_tree(vz_root) == before


def shared_bytes(path):
    """(exclusive, shared) bytes of a tree, from btrfs' own extent accounting."""
    subprocess.run(["btrfs", "filesystem", "sync", str(path)], check=True)
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1].split()
    return int(out[1]), int(out[2])


def has_network(engine):
    return any("ipadd" in f.params for f in engine.features)


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "full"])
def test_a_clone_is_a_new_ve_with_its_own_identity_and_addresses(net, engine, cli, new_ctid, linked):
    src, dst = new_ctid(), new_ctid()
    has_net = has_network(engine)
    engine.create(src, "tiny", hostname="teacher", **({"ipadd": [net.ip(213)]} if has_net else {}))
    if not has_net:  # without the network feature its config key stands for it
        conf = engine.config(src)
        conf.set("IP_ADDRESS", net.ip(213))
        conf.save()
    engine.start(src, wait_boot=True)
    engine.exec(src, "echo lesson > /root/material")
    args = ["clone", str(src), str(dst), "--hostname", "student1"] + (["--linked"] if linked else [])
    if has_net and linked:
        args += ["--ipadd", net.ip(214)]
    r = cli("vzctl", *args)
    assert r.returncode == 0, r.stderr
    assert ("linked" if linked else "full") + " clone" in r.stdout

    engine.start(dst, wait_boot=True)
    assert engine.is_running(src) and engine.is_running(dst)
    assert engine.exec(dst, "hostname").stdout.strip() == "student1"
    assert engine.exec(src, "hostname").stdout.strip() == "teacher"
    assert read(engine, dst, "/root/material") == "lesson\n"
    mid_src, mid_dst = (read(engine, c, "/etc/machine-id").strip() for c in (src, dst))
    assert len(mid_dst) == 32 and mid_src != mid_dst
    assert engine.status(src).ip_addresses == [net.ip(213)]
    # addresses are never copied: the clone has the ones given to it, or none
    assert engine.status(dst).ip_addresses == ([net.ip(214)] if has_net and linked else [])
    if has_net:
        assert net.ip(213) in engine.exec(src, "ip -4 addr").stdout
        inside = engine.exec(dst, "ip -4 addr").stdout
        assert net.ip(213) not in inside and ((net.ip(214) in inside) == linked)
    # the two are independent
    engine.exec(dst, "echo changed > /root/material")
    assert read(engine, src, "/root/material") == "lesson\n"
    exclusive, shared = shared_bytes(engine.layout.private(dst))
    if linked:
        assert shared > 1_000_000
    else:
        assert shared == 0 and exclusive > 1_000_000


@pytest.mark.slow
def test_a_clone_of_a_debian_ve_gets_new_ssh_host_keys(engine, new_ctid):
    src, dst = new_ctid(), new_ctid()
    engine.create(src, "debian-12-sysv")
    engine.clone(src, dst, linked=True)
    keys = [(engine.layout.private(c) / "etc/ssh/ssh_host_ed25519_key.pub").read_text() for c in (src, dst)]
    assert keys[0] != keys[1] and all(k.startswith("ssh-ed25519 ") for k in keys)
    assert "root@ve" in keys[1]


def test_a_clone_from_a_snapshot_takes_the_snapshot_files(engine, new_ctid):
    src, dst = new_ctid(), new_ctid()
    engine.create(src, "tiny")
    (engine.layout.private(src) / "root/f").write_text("at snapshot\n")
    engine.snapshot(src, "base")
    (engine.layout.private(src) / "root/f").write_text("later\n")
    engine.clone(src, dst, snapshot="base")
    assert (engine.layout.private(dst) / "root/f").read_text() == "at snapshot\n"
    assert engine.snapshot_list(dst) == []


@pytest.mark.parametrize("point", ["clone:before-config", "clone:after-config"])
def test_a_failed_clone_leaves_nothing_behind(engine, new_ctid, vz_root, monkeypatch, point):
    src, dst = new_ctid(), new_ctid()
    engine.create(src, "tiny")
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_FAIL_AT", point)
    with pytest.raises(CommandFailed, match="injected failure"):
        engine.clone(src, dst)
    assert root_tree(vz_root) == before and not engine.exists(dst)


def test_reinstall_gives_a_fresh_system_and_keeps_identity_config_and_kept_dirs(net, engine, cli, tiny_ve, vz_root):
    engine.set(tiny_ve, hostname="keeper", nameserver=["10.213.0.53"], userpasswd=[("root", "s3cret")])
    if has_network(engine):
        engine.set(tiny_ve, ipadd=[net.ip(215)])
    else:
        conf = engine.config(tiny_ve)
        conf.set("IP_ADDRESS", net.ip(215))
        conf.save()
    engine.exec(tiny_ve, "mkdir -p /root/work /home/alice && echo mine > /root/work/notes && "
                         "echo hers > /home/alice/f && echo broken > /etc/motd && rm /bin/vi")
    machine_id = read(engine, tiny_ve, "/etc/machine-id")
    shadow_root = read(engine, tiny_ve, "/etc/shadow").splitlines()[0]
    conf_before = engine.config(tiny_ve).values

    r = cli("vzctl", "reinstall", str(tiny_ve), "--keep", "root")
    assert r.returncode == 0, r.stderr
    engine.wait_booted(tiny_ve)
    assert engine.is_running(tiny_ve)
    assert engine.exec(tiny_ve, "test -e /bin/vi").returncode == 0  # fresh system
    assert engine.exec(tiny_ve, "test -e /etc/motd").returncode == 1
    assert engine.exec(tiny_ve, "test -e /home/alice").returncode == 1  # not kept
    assert read(engine, tiny_ve, "/root/work/notes") == "mine\n"  # kept
    assert engine.exec(tiny_ve, "hostname").stdout.strip() == "keeper"
    assert read(engine, tiny_ve, "/etc/machine-id") == machine_id
    assert read(engine, tiny_ve, "/etc/shadow").splitlines()[0] == shadow_root
    assert "nameserver 10.213.0.53" in read(engine, tiny_ve, "/etc/resolv.conf")
    assert engine.config(tiny_ve).values == conf_before  # same id, addresses, limits, config
    assert engine.status(tiny_ve).ip_addresses == [net.ip(215)]
    if has_network(engine):
        assert net.ip(215) in engine.exec(tiny_ve, "ip -4 addr").stdout
    old = [s for s in engine.snapshot_list(tiny_ve) if s.name.startswith("before-reinstall-")]
    assert len(old) == 1  # the old root, kept as a snapshot
    assert (engine.layout.snapshot_dir(tiny_ve) / old[0].name / "etc/motd").read_text() == "broken\n"


def test_a_failed_reinstall_puts_the_old_root_back(engine, tiny_ve, vz_root, monkeypatch):
    engine.exec(tiny_ve, "echo old > /etc/marker")
    before = root_tree(vz_root)
    conf_before = (vz_root / f"conf/{tiny_ve}.conf").read_text()
    monkeypatch.setenv("VZ_FAIL_AT", "reinstall:after-swap")
    with pytest.raises(CommandFailed, match="injected failure"):
        engine.reinstall(tiny_ve, keep=["root"])
    assert engine.is_running(tiny_ve)
    engine.wait_booted(tiny_ve)
    assert read(engine, tiny_ve, "/etc/marker") == "old\n"
    assert root_tree(vz_root) == before
    assert (vz_root / f"conf/{tiny_ve}.conf").read_text() == conf_before


BAD = [
    (["snapshot", "{ve}", "--name", "../x"], 2, "invalid snapshot name"),
    (["snapshot", "{ve}", "--name", "base"], 4, "already has a snapshot 'base'"),
    (["snapshot", "{free}"], 3, "VE {free} does not exist"),
    (["snapshot-switch", "{ve}", "--name", "nope"], 3, "VE {ve} has no snapshot 'nope'"),
    (["snapshot-delete", "{ve}", "nope"], 3, "VE {ve} has no snapshot 'nope'"),
    (["snapshot-switch", "{ve}"], 2, "needs a snapshot name"),
    (["clone", "{ve}", "{ve}"], 2, "a clone needs an id of its own"),
    (["clone", "{ve}", "{ve2}"], 4, "VE {ve2} already exists"),
    (["clone", "{free}", "{free2}"], 3, "VE {free} does not exist"),
    (["clone", "{ve}", "{free}", "--snapshot", "nope"], 3, "has no snapshot 'nope'"),
    (["clone", "{ve}", "{free}", "--hostname", "bad_host"], 2, "invalid hostname"),
    (["reinstall", "{ve}", "--keep", "../etc"], 2, "invalid path to keep"),
    (["reinstall", "{ve}", "--ostemplate", "no-such"], 3, "unknown OS template"),
    (["reinstall", "{ve}", "--keep", "etc/hostname"], 2, "not a plain directory"),
]


@pytest.fixture(scope="module")
def two_ves(vz_root):
    """Two stopped tiny VEs, the first with snapshot 'base' (shared: bad input changes nothing)."""
    eng = Engine(vz_root, lock_wait=30)
    ves = [990_001 + os.getpid() % 1000 * 10 + i for i in range(2)]
    try:
        for c in ves:
            eng.create(c, "tiny")
        eng.snapshot(ves[0], "base")
        yield ves
    finally:
        for c in ves:
            if eng.exists(c):
                eng.destroy(c)


@pytest.mark.parametrize(("args", "code", "message"), BAD, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(BAD)])
def test_it_refuses_bad_input_and_changes_nothing(two_ves, cli, vz_root, new_ctid, args, code, message):
    ve, ve2 = two_ves
    fill = {"ve": ve, "ve2": ve2, "free": new_ctid(), "free2": new_ctid()}
    args = [a.format(**fill) for a in args]
    before = root_tree(vz_root) + root_tree(vz_root / f"pool/snapshots/{ve}")
    conf_before = (vz_root / f"conf/{ve}.conf").read_text()
    r = cli("vzctl", *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: "), r.stderr
    assert message.format(**fill) in lines[0]
    assert root_tree(vz_root) + root_tree(vz_root / f"pool/snapshots/{ve}") == before
    assert (vz_root / f"conf/{ve}.conf").read_text() == conf_before


def test_the_directory_backend_refuses_snapshots_and_says_why(tmp_path_factory):
    root = tmp_path_factory.mktemp("vzdir", numbered=True)
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text('STORAGE="dir"\n')
    eng = Engine(root, lock_wait=30)
    try:
        eng.create(300, "tiny")
        with pytest.raises(Unsupported, match=r"plain directories \(STORAGE=dir\)"):
            eng.snapshot(300, "x")
        with pytest.raises(Unsupported, match="make a full clone"):
            eng.clone(300, 301, linked=True)
        eng.clone(300, 301)  # a full copy works everywhere
        assert (eng.layout.private(301) / "bin/busybox").exists()
        assert eng.config(301).hostname == "ve301"
        with pytest.raises(NotFound):
            eng.snapshot_switch(302, "x")
    finally:
        eng.purge()
