"""Each VE runs as its own host id range: one VE's root is never another's, nor the files' owner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vzengine import Engine, criu, idmap, idmount

pytestmark = pytest.mark.root

BASE = 100000  # IDMAP_BASE of the test root: how VE files are stored on disk


def host_ids(engine, ctid) -> tuple[int, int]:
    """(uid, gid) the VE's init runs as on the host, read from /proc."""
    pid = engine.lxc.init_pid(ctid)
    assert pid, f"VE {ctid} has no init"
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(ln for ln in status if ln.startswith("Uid:")).split()[1:]
    gid = next(ln for ln in status if ln.startswith("Gid:")).split()[1:]
    assert len(set(uid)) == 1 and len(set(gid)) == 1  # real, effective, saved, fs: all the same
    return int(uid[0]), int(gid[0])


def held(engine, ctid) -> int:
    """The range the VE's config names, checked against the host-wide slot that holds it."""
    h = engine.host_range(engine.config(ctid))
    assert h is not None
    assert idmap.holds(engine.layout.root, ctid, h)
    return h


def all_slots() -> dict[int, str]:
    return {int(p.name): p.read_text() for p in idmap.RANGE_DIR.iterdir() if p.name.isdigit()}


def as_uid(uid: int, code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` as host uid/gid ``uid`` with no other groups (a VE root that got out)."""
    return subprocess.run([sys.executable, "-c", code], user=uid, group=uid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/")


def test_it_gives_each_running_ve_its_own_host_uids(engine, new_ctid):
    a, b = new_ctid(), new_ctid()
    for ctid in (a, b):
        engine.create(ctid, "tiny")
        engine.start(ctid)
    (ua, ga), (ub, gb) = host_ids(engine, a), host_ids(engine, b)
    assert ua == ga == held(engine, a)
    assert ub == gb == held(engine, b)
    assert ua != ub and BASE not in (ua, ub)
    assert abs(ua - ub) >= idmap.RANGE_SIZE  # the whole ranges are apart, not only the roots
    for h in (ua, ub):
        assert idmap.RANGE_FIRST <= h < idmap.range_end() - idmap.RANGE_SIZE + 1
    # Host-wide: no other VE, of this root or any other, holds either range.
    slots = all_slots()
    assert len(set(slots.values())) == len(slots), "two slots name the same VE"
    assert {ua, ub} <= set(slots)
    # Every running VE on the host (of any root) runs as a different host uid.
    inits = {}
    for key in slots.values():
        root, _, ctid = key.strip().partition("\n")
        if os.path.isdir(root) and Path(root, "conf", f"{ctid}.conf").exists():
            eng = Engine(root)
            if eng.is_running(int(ctid)):
                inits[(root, ctid)] = host_ids(eng, int(ctid))[0]
    assert len(set(inits.values())) == len(inits)
    # Inside, the VE is root as before and sees its own range only.
    r = engine.exec(a, "id -u; cat /proc/self/uid_map")
    assert r.stdout.split() == ["0", "0", str(ua), "65536"]


def test_a_ve_root_that_got_out_cannot_touch_another_ves_files(engine, new_ctid):
    a, b = new_ctid(), new_ctid()
    for ctid in (a, b):
        engine.create(ctid, "tiny")
        engine.start(ctid)
    engine.exec(a, "echo secret > /root/secret; chmod 600 /root/secret; echo open > /root/open; "
                   "chmod 644 /root/open; mkdir -m 755 /root/dir")
    ha, hb = held(engine, a), held(engine, b)
    raw = engine.layout.private(a) / "root"
    seen = engine.layout.ve_mount(a) / "root"
    for name in ("secret", "open", "dir"):
        assert (raw / name).stat().st_uid == BASE  # stored as always
        assert (seen / name).stat().st_uid == ha  # A's own range, through A's mount
        assert hb not in ((raw / name).stat().st_uid, (seen / name).stat().st_uid)
    # B's root, as a host process (what a namespace escape would give it), attacks A's files.
    attack = f"""
import os
results = []
for path in {[str(seen / 'secret'), str(seen / 'open'), str(raw / 'secret'), str(raw / 'open')]!r}:
    for mode in (os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        try:
            os.close(os.open(path, mode)); results.append("opened " + path)
        except PermissionError:
            pass
for path in {[str(raw / 'secret')]!r}:
    try:
        open(path).read(); results.append("read " + path)
    except PermissionError:
        pass
for path in {[str(raw / 'dir' / 'new'), str(raw / 'evil')]!r}:
    try:
        open(path, "w").write("x"); results.append("wrote " + path)
    except PermissionError:
        pass
try:
    os.listdir({str(seen.parent)!r}); results.append("listed A's mount")
except PermissionError:
    pass
try:
    os.chown({str(raw / 'open')!r}, {hb}, {hb}); results.append("chowned")
except PermissionError:
    pass
print(repr(results))
"""
    r = as_uid(hb, attack)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert (raw / "secret").read_text() == "secret\n" and (raw / "open").read_text() == "open\n"
    assert not (raw / "dir" / "new").exists() and not (raw / "evil").exists()
    assert (raw / "open").stat().st_uid == BASE
    # Nor is B's root the owner of anything of B's on disk: host uid hb owns no file at all.
    r = subprocess.run(["find", str(engine.layout.private(b)), "-xdev", "-uid", str(hb), "-print", "-quit"],
                       capture_output=True, text=True)
    assert r.stdout == ""
    # The mount's directory lets only A's root through (group ha, mode 0710) and nobody write in it.
    st = seen.parent.parent.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o710, 0, ha)
    r = as_uid(ha, f"import os; print(os.stat({str(seen)!r}).st_uid); open({str(seen.parent.parent / 'x')!r}, 'w')")
    assert r.stdout.strip() == str(ha) and "PermissionError" in r.stderr


def test_stop_start_restart_keep_the_range_and_stop_unmounts(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    h = held(engine, ctid)  # chosen at create
    engine.start(ctid)
    assert host_ids(engine, ctid)[0] == h
    assert idmount.is_mountpoint(engine.layout.ve_mount(ctid))
    engine.stop(ctid, fast=True)
    assert not idmount.mount_points(engine.layout.mntdir / str(ctid))
    assert not (engine.layout.mntdir / str(ctid)).exists()
    engine.start(ctid)
    assert host_ids(engine, ctid)[0] == h
    engine.restart(ctid)
    assert host_ids(engine, ctid)[0] == h == held(engine, ctid)
    assert len(idmount.mount_points(engine.layout.mntdir / str(ctid))) == 1


def test_destroy_frees_the_range_and_leaves_nothing_mounted(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    engine.start(ctid, wait_boot=True)
    h = held(engine, ctid)
    engine.exec(ctid, "poweroff")  # the VE stops itself: its mount stays until a start or destroy
    deadline = time.monotonic() + 30
    while engine.is_running(ctid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not engine.is_running(ctid)
    engine.destroy(ctid)
    assert not idmap.holds(engine.layout.root, ctid, h)
    assert not any(k.startswith(f"{os.path.realpath(engine.layout.root)}\n{ctid}\n") for k in all_slots().values())
    assert not idmount.mount_points(engine.layout.mntdir / str(ctid))
    assert not (engine.layout.mntdir / str(ctid)).exists()
    assert not any(f"/{ctid}/" in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if str(engine.layout.root) in line)


def test_a_ve_from_before_the_upgrade_gets_a_range_at_start(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    conf = engine.config(ctid)
    conf.values.pop("IDMAP")  # what a config written before per-VE ranges looks like
    conf.save()
    idmap.release(engine.layout.root, ctid)
    engine._write_lxc_config(conf)
    text = (engine.layout.lxcpath / str(ctid) / "config").read_text()
    assert f"lxc.idmap = u 0 {BASE} 65536" in text  # it would run as it always did
    engine.start(ctid)
    h = held(engine, ctid)
    assert host_ids(engine, ctid)[0] == h != BASE
    text = (engine.layout.lxcpath / str(ctid) / "config").read_text()
    assert f"lxc.idmap = u 0 {h} 65536" in text and f"dir:{engine.layout.ve_mount(ctid)}" in text


def test_a_clone_and_a_restore_get_ranges_of_their_own(engine, new_ctid, tmp_path):
    src, clone, restored = new_ctid(), new_ctid(), new_ctid()
    engine.create(src, "tiny")
    engine.start(src)
    hs = held(engine, src)
    engine.clone(src, clone)
    archive = engine.backup(src, tmp_path).path
    engine.restore(archive, restored)
    for ctid in (clone, restored):
        engine.start(ctid)
    hc, hr = held(engine, clone), held(engine, restored)
    assert len({hs, hc, hr}) == 3
    assert [host_ids(engine, c)[0] for c in (src, clone, restored)] == [hs, hc, hr]
    assert held(engine, src) == hs  # the source keeps its own


def test_two_engine_roots_share_no_range_and_purge_frees_theirs(engine, new_ctid, net):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    engine.start(ctid)
    mine = held(engine, ctid)
    other = Path(tempfile.mkdtemp(prefix="vztest-ids-", dir="/var/tmp"))
    try:
        os.chmod(other, 0o711)
        (other / "vz.conf").write_text(f'POOL_SIZE="1G"\nIP_POOL="{net.pool}"\n')
        eng2 = Engine(other)
        eng2.ensure_ready()
        eng2.create(ctid, "tiny")  # the same VE id in another root
        eng2.start(ctid)
        theirs = held(eng2, ctid)
        assert theirs != mine and host_ids(eng2, ctid)[0] == theirs != host_ids(engine, ctid)[0]
        eng2.purge()
        assert not any(k.startswith(f"{other}\n") for k in all_slots().values())
        assert not idmount.mount_points(other)
        assert (idmap.RANGE_DIR / str(mine)).exists()
    finally:
        if other.exists():
            Engine(other).purge()
        shutil.rmtree(other, ignore_errors=True)


def test_a_freed_range_is_not_handed_out_again_at_once(tmp_path):
    a = idmap.claim(tmp_path, 1)
    idmap.release(tmp_path, 1)
    b = idmap.claim(tmp_path, 2)
    try:
        assert b != a
    finally:
        idmap.release(tmp_path, 2)


def test_a_copied_config_never_keeps_its_sources_range(tmp_path):
    a = idmap.claim(tmp_path, 7)
    try:
        assert idmap.claim(tmp_path, 7, a) == a
        assert idmap.claim(tmp_path, 7) == a  # a VE holds one range
        b = idmap.claim(tmp_path, 8, a)  # VE 8's config names VE 7's range
        try:
            assert b != a and idmap.holds(tmp_path, 8, b) and idmap.holds(tmp_path, 7, a)
        finally:
            idmap.release(tmp_path, 8)
    finally:
        idmap.release(tmp_path, 7)
    assert not idmap.holds(tmp_path, 7, a)


def test_ranges_of_vanished_ves_are_taken_back(tmp_path):
    gone, idle = tmp_path / "gone-root", tmp_path / "root"
    gone.mkdir()
    idle.mkdir()
    a = idmap.claim(gone, 1)  # its root is removed without a purge
    b = idmap.claim(idle, 2)  # its create crashed: no config, ever
    os.utime(idmap.RANGE_DIR / str(b), (time.time() - idmap.STALE_AFTER - 5,) * 2)
    gone.rmdir()
    try:
        c = idmap.claim(idle, 3)
        assert not idmap.holds(gone, 1, a) and not idmap.holds(idle, 2, b)
        assert idmap.holds(idle, 3, c)
    finally:
        for root, ctid in ((idle, 3), (idle, 2), (gone, 1)):
            idmap.release(root, ctid)


@pytest.mark.slow
def test_suspend_and_resume_keep_working(engine, cli, new_ctid):
    criu.require()
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv")
    engine.start(ctid, wait_boot=True)
    h = held(engine, ctid)
    engine.exec(ctid, "setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $! > /run/loop.pid")
    loop = engine.exec(ctid, "cat /run/loop.pid").stdout.strip()
    r = cli("vzctl", "suspend", str(ctid))
    assert r.returncode == 0, r.stderr
    assert not idmount.mount_points(engine.layout.mntdir / str(ctid))
    r = cli("vzctl", "resume", str(ctid))
    assert r.returncode == 0, r.stderr
    assert host_ids(engine, ctid)[0] == h
    assert engine.exec(ctid, f"kill -0 {loop} && echo alive").stdout.strip() == "alive"
    assert engine.exec(ctid, "touch /root/after && stat -c %u /root/after").stdout.strip() == "0"
    assert (engine.layout.private(ctid) / "root/after").stat().st_uid == BASE


@pytest.mark.parametrize("template", ["tiny", "debian-12-sysv", "debian-12"])
def test_create_rewrites_no_file_of_the_template(engine, new_ctid, template):
    """Each VE's own id range comes from an id-mapped mount, not from re-owning its files: a create that
    chowned the tree would cost time with every file (bench/ measures create), and would touch every inode."""
    tree = engine.templates.ensure(template)
    ctid = new_ctid()
    engine.create(ctid, template)
    try:
        root = engine.layout.private(ctid)
        checked = 0
        for top in ("bin", "usr/bin", "usr/lib", "lib"):
            base = tree / top
            if base.is_symlink() or not base.is_dir():
                continue
            for path in base.rglob("*"):
                if path.is_symlink() or not path.is_file():
                    continue
                mine, theirs = (root / path.relative_to(tree)).lstat(), path.lstat()
                assert (mine.st_uid, mine.st_gid, mine.st_ctime_ns) == (theirs.st_uid, theirs.st_gid,
                                                                        theirs.st_ctime_ns), path
                checked += 1
        assert checked > 0
    finally:
        engine.destroy(ctid)


@pytest.mark.slow
def test_a_ve_suspended_before_the_upgrade_resumes_as_it_ran_then_gets_a_range(engine, cli, new_ctid):
    criu.require()
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv")
    conf = engine.config(ctid)
    conf.values.pop("IDMAP")  # running as every VE did before: host uid 100000, its root bound raw
    conf.save()
    idmap.release(engine.layout.root, ctid)
    engine._write_lxc_config(conf)
    for feature in engine.features:
        feature.before_start(conf)
    engine.lxc.start(ctid, engine.layout.logdir / f"{ctid}.lxc.log")
    for feature in engine.features:
        feature.after_start(conf)
    engine.wait_booted(ctid)
    assert host_ids(engine, ctid)[0] == BASE
    r = cli("vzctl", "suspend", str(ctid))
    assert r.returncode == 0, r.stderr
    # CRIU puts back the id map it saved: the VE comes back exactly as it ran.
    r = cli("vzctl", "resume", str(ctid))
    assert r.returncode == 0, r.stderr
    assert host_ids(engine, ctid)[0] == BASE
    assert engine.exec(ctid, "pgrep -x sshd >/dev/null && echo up").stdout.strip() == "up"
    engine.restart(ctid)  # its next start gives it a range of its own
    h = held(engine, ctid)
    assert host_ids(engine, ctid)[0] == h != BASE
