"""Backups of running VEs: one archive, a faithful restore, and bad archives refused with nothing changed."""

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.conftest import root_tree
from vzengine import AlreadyExists, CommandFailed, Engine, InvalidInput, NotFound

pytestmark = pytest.mark.root

BASE = 100000  # IDMAP_BASE of the test root: uid 0 inside a VE


def plant_special_files(root: Path) -> None:
    """Put every kind of file a backup must carry into a VE's root, from the host."""
    d = root / "srv/zoo"
    d.mkdir(parents=True)
    os.chown(d, BASE, BASE)
    os.chmod(d, 0o1777)  # sticky

    def make(rel, data=b"", mode=0o644, uid=BASE, gid=BASE):
        p = d / rel
        p.write_bytes(data)
        os.chown(p, uid, gid)
        os.chmod(p, mode)
        return p

    a = make("hard-a", b"shared inode\n")
    os.link(a, d / "hard-b")
    os.link(a, d / "hard-c")
    make("setuid", b"#!/bin/sh\n", 0o4755)
    make("owned-by-a-user", b"alice\n", 0o640, BASE + 1000, BASE + 1000)
    os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(d / "fifo", 0o600)
    for p in ("null", "loop0", "fifo"):
        os.chown(d / p, BASE, BASE + 6)
    os.symlink("hard-a", d / "rel-link")
    os.symlink("/etc/hostname", d / "abs-link")
    os.symlink("../nowhere", d / "dangling")
    os.lchown(d / "rel-link", BASE, BASE)
    x = make("xattrs", b"with attributes\n")
    os.setxattr(x, "user.colour", b"blue")
    os.setxattr(x, "trusted.vz", b"\x00\x01binary")
    caps = struct.pack("<IIIIII", 0x03000000, 1 << 13, 1 << 13, 0, 0, BASE)  # v3: cap_net_raw, rootid
    os.setxattr(make("ping-like", b"\x7fELF", 0o755), "security.capability", caps)
    acl = make("acl-file", b"acl\n")
    subprocess.run(["setfacl", "-m", f"u:{BASE + 1000}:rw,g:{BASE + 44}:r", str(acl)], check=True)
    subprocess.run(["setfacl", "-d", "-m", f"u:{BASE + 1000}:rwx", str(d)], check=True)
    with open(d / "sparse", "wb") as f:  # 64 MiB apparent, a few KiB of data
        f.seek(32 << 20)
        f.write(b"middle")
        f.truncate(64 << 20)
    os.chown(d / "sparse", BASE, BASE)
    make("name with spaces", b"1\n")
    make("line\nbreak", b"2\n")
    (d / os.fsdecode(b"latin1-\xe9t\xe9")).write_bytes(b"3\n")
    deep = d / "/".join(["a-rather-long-directory-name-for-pax"] * 5)
    deep.mkdir(parents=True)
    (deep / ("f" * 200)).write_bytes(b"deep\n")
    old = time.time() - 86400 * 400
    os.utime(d / "hard-a", (old, old))
    for dirpath, dirnames, filenames in os.walk(d):  # a VE's files are its own: host root's are not kept
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_uid == 0:
                os.lchown(p, BASE, BASE)


def tree(root: Path, skip=()) -> dict:
    """Everything a faithful copy must keep, path by path (links, devices, owners, modes, xattrs, data)."""
    out = {}
    inodes: dict[int, list[bytes]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, broot)
            if any(rel == s or rel.startswith(s + b"/") for s in skip):
                continue
            st = os.lstat(p)
            rec = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    rec["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
                rec["size"] = st.st_size
                rec["mtime"] = int(st.st_mtime)
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISLNK(st.st_mode):
                rec["xattrs"] = {k: os.getxattr(p, k, follow_symlinks=False)
                                 for k in sorted(os.listxattr(p, follow_symlinks=False))}
            out[rel] = rec
    for group in inodes.values():
        for rel in group:
            out[rel]["links"] = sorted(group)
    return out


@pytest.mark.slow
def test_it_backs_up_a_running_ve_and_restores_it_faithfully(net, engine, cli, new_ctid, tmp_path):
    src, dst = new_ctid(), new_ctid()
    has_net = any("ipadd" in f.params for f in engine.features)
    engine.create(src, "debian-12-sysv", hostname="web", **({"ipadd": [net.ip(216)]} if has_net else {}))
    plant_special_files(engine.layout.private(src))
    engine.start(src, wait_boot=True)
    # a process keeps appending while the backup is taken
    engine.exec(src, "setsid sh -c 'echo $$ > /run/writer; i=0; while :; do i=$((i+1)); echo $i >> /root/log; "
                     "done' </dev/null >/dev/null 2>&1 &")
    time.sleep(0.3)
    seen = []
    result = engine.backup(src, tmp_path, progress=lambda p, m: seen.append((p, m)))
    assert engine.exec(src, "kill $(cat /run/writer)").returncode == 0
    assert engine.is_running(src)
    assert result.path.name.startswith(f"ve-{src}-") and result.path.name.endswith(".tar.zst")
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]  # one file, no leftovers
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert any("MB" in m and 5 <= p < 100 for p, m in seen), seen  # progress while it runs
    assert result.manifest["files"] > 5000 and result.manifest["ve_state"] == "running"
    assert engine.snapshot_list(src) == []  # its temporary snapshot is gone

    r = cli("vzctl", "backup-verify", str(result.path))
    assert r.returncode == 0, r.stderr
    assert f"VE {src}" in r.stdout and result.manifest["sha256"] in r.stdout

    r = cli("vzctl", "restore", str(result.path), str(dst))
    assert r.returncode == 0, r.stderr
    a, b = engine.layout.private(src), engine.layout.private(dst)
    skip = [b"root/log", b"srv/zoo/loop0", b"dev/console"]
    assert tree(a, skip=skip) == tree(b, skip=skip)
    assert os.path.lexists(a / "srv/zoo/loop0") and not os.path.lexists(b / "srv/zoo/loop0")  # a host device
    assert tree(a / "srv/zoo")  # the special files were compared
    assert os.stat(b / "srv/zoo/sparse").st_blocks * 512 < (1 << 20)  # still sparse
    assert os.stat(b).st_uid == BASE and stat.S_IMODE(os.stat(b).st_mode) == stat.S_IMODE(os.stat(a).st_mode)
    # the appended file is a clean prefix of what was written: the backup is one point in time
    lines = (b / "root/log").read_text().splitlines()
    assert len(lines) > 10 and lines == [str(i) for i in range(1, len(lines) + 1)]

    conf = engine.config(dst)
    assert conf.hostname == "web" and conf.ostemplate == "debian-12-sysv"
    assert engine.status(dst).ip_addresses == []  # another id: the original's addresses stay its own
    engine.start(dst, wait_boot=True)
    assert engine.exec(dst, "cat /srv/zoo/hard-b").stdout == "shared inode\n"
    assert engine.exec(dst, "id -u; stat -c %U /root").stdout.split() == ["0", "root"]


@pytest.fixture(scope="module")
def tiny_backup(vz_root, tmp_path_factory):
    """(engine, ctid, archive) of a stopped tiny VE; the VE is destroyed at the end."""
    eng = Engine(vz_root, lock_wait=30)
    ctid = 980_001 + os.getpid() % 1000 * 10
    eng.create(ctid, "tiny")
    (eng.layout.private(ctid) / "root/data").write_bytes(os.urandom(256 << 10))
    try:
        yield eng, ctid, eng.backup(ctid, tmp_path_factory.mktemp("bk")).path
    finally:
        if eng.exists(ctid):
            eng.destroy(ctid)


def truncated(_eng, src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def flipped(_eng, src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def tampered(_eng, src: Path, dst: Path) -> Path:
    """Change one byte of a file's data and compress again: zstd is happy, the checksum is not."""
    raw = bytearray(subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=True).stdout)
    i = raw.index(b"root/bin/busybox")  # the busybox binary's header; change a byte of its data
    raw[i + 512 + 4096] ^= 0x01
    subprocess.run(["zstd", "-q", "-f", "-o", str(dst)], input=bytes(raw), check=True)
    return dst


def foreign(eng, _src: Path, dst: Path) -> Path:
    shutil.copy(eng.layout.template_cache / "tiny.tar.zst", dst)
    return dst


def garbage(_eng, _src: Path, dst: Path) -> Path:
    dst.write_bytes(os.urandom(4096))
    return dst


def empty(_eng, _src: Path, dst: Path) -> Path:
    dst.write_bytes(b"")
    return dst


BAD_ARCHIVES = [
    (truncated, "is truncated"),
    (flipped, "(damaged|corrupted)"),
    (tampered, "is corrupted: its data does not match the checksum"),
    (foreign, "is not a vzpanel backup"),
    (garbage, "is not a vzpanel backup"),
    (empty, "is not a vzpanel backup"),
]


@pytest.mark.parametrize(("make", "message"), BAD_ARCHIVES, ids=[m.__name__ for m, _ in BAD_ARCHIVES])
def test_a_bad_archive_is_refused_and_nothing_changes(tiny_backup, cli, vz_root, new_ctid, tmp_path, make,
                                                      message):
    eng, ctid, good = tiny_backup
    bad = make(eng, good, tmp_path / "bad.tar.zst")
    r = cli("vzctl", "backup-verify", str(bad))
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[")]  # not progress
    assert len(errors) == 1 and errors[0].startswith("vzctl: "), r.stderr
    assert re.search(message, errors[0]), errors[0]

    before = root_tree(vz_root)
    for target in (str(new_ctid()), str(ctid)):
        args = ["restore", str(bad), target] + (["--force"] if target == str(ctid) else [])
        r = cli("vzctl", *args)
        assert r.returncode == 2, r.stderr
        assert re.search(message, r.stderr.strip().splitlines()[-1]), r.stderr
        assert root_tree(vz_root) == before
    assert (eng.layout.private(ctid) / "root/data").exists()


def test_a_good_archive_verifies(tiny_backup):
    eng, ctid, good = tiny_backup
    m = eng.backup_verify(good)
    assert m["ctid"] == ctid and m["files"] > 100 and len(m["sha256"]) == 64


def test_a_missing_file_is_a_clear_error(engine, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        engine.backup_verify(tmp_path / "nope.tar.zst")
    with pytest.raises(NotFound, match="does not exist"):
        engine.restore(tmp_path / "nope.tar.zst", 4242)


def test_restore_onto_an_existing_ve_needs_force_and_then_replaces_it(engine, cli, tiny_ve, tmp_path, vz_root):
    engine.exec(tiny_ve, "echo backed-up > /root/state")
    archive = engine.backup(tiny_ve, tmp_path).path
    engine.exec(tiny_ve, "echo later > /root/state")
    before = root_tree(vz_root)
    r = cli("vzctl", "restore", str(archive))
    assert r.returncode == 4 and "add --force" in r.stderr
    assert root_tree(vz_root) == before
    with pytest.raises(AlreadyExists):
        engine.restore(archive, tiny_ve)

    r = cli("vzctl", "restore", str(archive), "--force")
    assert r.returncode == 0, r.stderr
    assert engine.is_running(tiny_ve)  # it was running, so it runs again
    engine.wait_booted(tiny_ve)
    assert engine.exec(tiny_ve, "cat /root/state").stdout == "backed-up\n"
    assert root_tree(vz_root) == before


def test_a_failed_restore_over_a_ve_puts_it_back(engine, tiny_ve, tmp_path, monkeypatch, vz_root):
    engine.exec(tiny_ve, "echo old > /root/state")
    archive = engine.backup(tiny_ve, tmp_path).path
    engine.exec(tiny_ve, "echo current > /root/state")
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_FAIL_AT", "restore:after-swap")
    with pytest.raises(CommandFailed, match="injected failure"):
        engine.restore(archive, tiny_ve, force=True)
    assert engine.is_running(tiny_ve)
    engine.wait_booted(tiny_ve)
    assert engine.exec(tiny_ve, "cat /root/state").stdout == "current\n"
    assert root_tree(vz_root) == before


def test_backup_goes_to_the_root_by_default_and_lists(engine, cli, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    r = cli("vzctl", "backup", str(ctid))
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    try:
        assert path.parent == vz_root / "backups" and path.exists()
        assert str(path) in cli("vzctl", "backup-list", str(ctid)).stdout
    finally:
        path.unlink()


def test_bad_backup_input(engine, new_ctid, tmp_path):
    with pytest.raises(NotFound):
        engine.backup(new_ctid())
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInput, match="not a directory"):
        engine.backup(ctid, tmp_path / "file")
