"""Hostile archives: a crafted backup or template must not reach the host, and backups are found by name only.

Each attack is a real .tar.zst with a valid-looking manifest (as the engine writes them), so the
restore gets past its checksums to the extractor; afterwards the host itself is checked.
"""

import hashlib
import io
import json
import os
import re
import stat
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.engine.conftest import root_tree
from vzengine import InvalidInput, NotFound, archive, backup, backupdir

pytestmark = pytest.mark.root

BASE = 100000  # IDMAP_BASE of the test root
NOBODY = BASE + 65534
MARK = Path(f"/tmp/vz-archive-attack-{os.getpid()}")  # where the attacks aim, outside every VE


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=BASE, gid=BASE, link="", dev=(0, 0), pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, link
    info.devmajor, info.devminor = dev
    info.size = len(data)
    info.mtime = int(time.time())
    info.pax_headers = pax or {}
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)


def tree_members(*extra: bytes) -> bytes:
    """A minimal VE tree (what restore needs) followed by the attack's members."""
    return b"".join([entry("root", tarfile.DIRTYPE, mode=0o755), entry("root/etc", tarfile.DIRTYPE, mode=0o755),
                     entry("root/etc/hostname", data=b"evil\n"), *extra])


def craft(path: Path, members: bytes, ctid: int = 4242) -> Path:
    """Write a vzpanel backup holding ``members`` as its VE tree, with a manifest that matches it."""
    conf = b'OSTEMPLATE="tiny"\nHOSTNAME="evil"\n'
    info = {"format": backup.FORMAT, "version": backup.VERSION, "ctid": ctid, "hostname": "evil",
            "ostemplate": "tiny", "created": "2026-01-01T00:00:00+0000", "ve_state": "stopped",
            "idmap_base": BASE, "estimated_bytes": None}
    out = io.BytesIO()
    scanner = backup.TarScanner(sink=out.write)
    scanner.feed(backup.member(backup.INFO, json.dumps(info).encode()))
    scanner.feed(backup.member(backup.CONF, conf))
    scanner.feed(members)
    scanner.flush()
    manifest = {**info, "files": scanner.members, "bytes": scanner.data_bytes, "tar_bytes": scanner.offset,
                "sha256": scanner.sha.hexdigest(), "conf_sha256": hashlib.sha256(conf).hexdigest()}
    raw = out.getvalue() + backup.member(backup.MANIFEST, json.dumps(manifest).encode()) + bytes(1024)
    subprocess.run(["zstd", "-q", "-f", "-o", str(path)], input=raw, check=True)
    return path


def v2_caps() -> str:
    """A v2 file capability (cap_setuid, no root id): it would work on the host."""
    return struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0).decode("utf-8", "surrogateescape")


REFUSED = {
    "absolute path": (entry(str(MARK)), "absolute path"),
    "long absolute path in pax": (entry(f"{MARK}/{'x' * 120}"), "absolute path"),
    "dot-dot": (entry(f"root/../../../../../..{MARK}"), r"'\.\.'"),
    "write through a symlink": (entry("root/escape", tarfile.SYMTYPE, link=str(MARK.parent)) +
                                entry(f"root/escape/{MARK.name}", data=b"pwned\n"), "through the symbolic link"),
    "write through a hard-linked symlink": (entry("root/escape", tarfile.SYMTYPE, link="/tmp") +
                                            entry("root/again", tarfile.LNKTYPE, link="root/escape") +
                                            entry(f"root/again/{MARK.name}", data=b"pwned\n"),
                                            "through the symbolic link"),
    "relative symlink climbing out": (entry("root/up", tarfile.SYMTYPE, link="../../../../../../tmp"),
                                      "climbs above"),
    "hard link to /etc/shadow": (entry("root/shadow", tarfile.LNKTYPE, link="/etc/shadow"), "absolute path"),
    "hard link climbing to /etc/shadow": (entry("root/shadow", tarfile.LNKTYPE, link="root/../../../../etc/shadow"),
                                          r"'\.\.'"),
    "hard link to a file not in the archive": (entry("root/shadow", tarfile.LNKTYPE, link="root/etc/shadow"),
                                               "no earlier file"),
    "symlink over the tree's top": (entry("root", tarfile.SYMTYPE, link="/"), "appears twice"),
    "member outside root/": (entry("etc/cron.d/evil", data=b"* * * * * root id\n"), "lies outside root/"),
    "global pax header": (entry("g", tarfile.XGLTYPE, data=archive._pax_bytes([("path", str(MARK).encode())])) +
                          entry("root/g", data=b"x"), "global pax header"),
    "a pax record tar is never given": (entry("root/x", pax={"LIBARCHIVE.xattr.security.capability": "AAAA"}),
                                        "pax record 'LIBARCHIVE"),
    "device node carrying data": (archive._with_size(entry("root/d", tarfile.CHRTYPE, dev=(1, 3)), 512) +
                                  entry("root/hidden", data=b"x"), "carries 512 bytes"),
}


@pytest.fixture
def victim(engine, new_ctid, vz_root):
    """(ctid, root listing) of a restore target; after the attack, check that the host is untouched."""
    MARK.unlink(missing_ok=True)
    shadow = os.stat("/etc/shadow")
    before = root_tree(vz_root)
    ctid = new_ctid()
    yield ctid, before
    assert not os.path.lexists(MARK), "an archive wrote outside the VE"
    assert os.stat("/etc/shadow").st_nlink == shadow.st_nlink
    assert not list((engine.layout.pool / "private").glob(f".{ctid}.restore*")), "staging left behind"
    private = engine.layout.private(ctid)
    if private.exists():
        for path, st in walk(private):
            assert BASE <= st.st_uid < BASE + 65536 and BASE <= st.st_gid < BASE + 65536, (path, st)
            assert not stat.S_ISBLK(st.st_mode), path
            if stat.S_ISCHR(st.st_mode):
                assert (os.major(st.st_rdev), os.minor(st.st_rdev)) in archive.HARMLESS_DEVICES, path
            assert st.st_ino != shadow.st_ino or st.st_dev != shadow.st_dev, path
            if stat.S_ISREG(st.st_mode):
                caps = os.getxattr(path, "security.capability", follow_symlinks=False) \
                    if "security.capability" in os.listxattr(path, follow_symlinks=False) else None
                assert caps is None or struct.unpack_from("<I", caps)[0] >> 24 == 3, path


def walk(top: Path):
    yield top, os.lstat(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            yield p, os.lstat(p)


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_it_refuses_an_archive_that_reaches_outside(engine, victim, vz_root, tmp_path, attack, cli):
    ctid, before = victim
    members, message = REFUSED[attack]
    bad = craft(tmp_path / "bad.tar.zst", tree_members(members))
    assert engine.backup_verify(bad)["files"] > 0  # its checksums are fine: only the filter stops it
    r = cli("vzctl", "restore", str(bad), str(ctid))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "was refused: member" in last and "nothing was restored" in last, last
    assert re.search(message, last), last
    assert root_tree(vz_root) == before and not engine.exists(ctid)


def test_it_keeps_host_owners_and_devices_out_of_a_restored_ve(engine, victim, tmp_path):
    ctid, _ = victim
    acl = struct.pack("<I", 2) + struct.pack("<HHI", 1, 7, 0xFFFFFFFF) + struct.pack("<HHI", 2, 7, 0) + \
        struct.pack("<HHI", 4, 5, 0xFFFFFFFF) + struct.pack("<HHI", 0x10, 7, 0xFFFFFFFF) + \
        struct.pack("<HHI", 0x20, 5, 0xFFFFFFFF)
    members = tree_members(
        entry("root/rootshell", data=b"#!/bin/sh\nid\n", mode=0o4755, uid=0, gid=0),  # uid-0 setuid
        entry("root/sgid-host", data=b"x", mode=0o2755, uid=BASE, gid=0),
        entry("root/users-file", data=b"x", uid=1000, gid=1000),
        entry("root/vesuid", data=b"#!/bin/sh\n", mode=0o4755),  # the VE's own setuid file: kept
        entry("root/dev", tarfile.DIRTYPE, mode=0o755),
        entry("root/dev/sda", tarfile.BLKTYPE, mode=0o666, dev=(8, 0)),
        entry("root/dev/mem", tarfile.CHRTYPE, mode=0o666, dev=(1, 1)),
        entry("root/dev/console", tarfile.CHRTYPE, mode=0o600, dev=(5, 1)),
        entry("root/dev/mem2", tarfile.LNKTYPE, link="root/dev/mem"),
        entry("root/dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),  # harmless: kept
        entry("root/dev/fifo", tarfile.FIFOTYPE, mode=0o600),
        entry("root/capped", data=b"\x7fELF", mode=0o755, pax={"SCHILY.xattr.security.capability": v2_caps()}),
        entry("root/acl", data=b"x", pax={"SCHILY.acl.access": "user::rwx\nuser:0:rwx\ngroup::r-x\nmask::rwx\n"
                                                                "other::r-x\n",
                                          "SCHILY.xattr.system.posix_acl_access":
                                              acl.decode("utf-8", "surrogateescape")}),
        entry("root/selinux", data=b"x", pax={"SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0"}),
        entry("root/link-in-ve", tarfile.SYMTYPE, link="/etc/shadow"),  # resolved inside the VE: kept
    )
    archive_path = craft(tmp_path / "owners.tar.zst", members)
    seen = []
    engine.restore(archive_path, ctid, progress=lambda p, m: seen.append(m))
    root = engine.layout.private(ctid)
    st = os.stat(root / "rootshell")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY) and not st.st_mode & 0o6000
    st = os.stat(root / "sgid-host")
    assert (st.st_uid, st.st_gid) == (BASE, NOBODY) and not st.st_mode & 0o6000
    assert (os.stat(root / "users-file").st_uid, os.stat(root / "users-file").st_gid) == (NOBODY, NOBODY)
    st = os.stat(root / "vesuid")
    assert st.st_uid == BASE and st.st_mode & 0o4000
    assert sorted(p.name for p in (root / "dev").iterdir()) == ["fifo", "null"]
    assert stat.S_ISFIFO(os.lstat(root / "dev/fifo").st_mode)
    assert "security.capability" not in os.listxattr(root / "capped")
    assert "system.posix_acl_access" not in os.listxattr(root / "acl")
    assert "security.selinux" not in os.listxattr(root / "selinux")
    assert os.readlink(root / "link-in-ve") == "/etc/shadow"
    note = next(m for m in seen if "changed or left out" in m)
    assert "root/dev/sda (block device 8:0)" in note and "root/rootshell" in note


def test_a_template_tarball_goes_through_the_same_filter(tmp_path):
    raw = b"".join([entry(".", tarfile.DIRTYPE, mode=0o755), entry("./etc", tarfile.DIRTYPE, mode=0o755),
                    entry("./bin", tarfile.SYMTYPE, link=str(MARK.parent)),
                    entry(f"./bin/{MARK.name}", data=b"pwned\n")]) + bytes(1024)
    bad = tmp_path / "evil.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(bad)], input=raw, check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    MARK.unlink(missing_ok=True)
    with pytest.raises(archive.UnsafeArchive, match=r"through the symbolic link.*nothing was imported"):
        archive.extract_zst(bad, dest, b".", (BASE, 65536), "template evil", "nothing was imported")
    assert not os.path.lexists(MARK)
    good = tmp_path / "good.tar.zst"
    raw = b"".join([entry(".", tarfile.DIRTYPE, mode=0o755), entry("./bin", tarfile.SYMTYPE, link="usr/bin"),
                    entry("./dev", tarfile.DIRTYPE), entry("./dev/console", tarfile.CHRTYPE, dev=(5, 1))])
    subprocess.run(["zstd", "-q", "-o", str(good)], input=raw + bytes(1024), check=True)
    dest = tmp_path / "dest2"
    dest.mkdir()
    assert archive.extract_zst(good, dest, b".", (BASE, 65536), "template good") == \
        ["./dev/console (character device 5:1)"]
    assert os.readlink(dest / "bin") == "usr/bin" and os.listdir(dest / "dev") == []


# --- backups by name ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def named(vz_root, tmp_path_factory):
    """(engine, ctid, directory, name) of a real backup of a stopped tiny VE in a root-only directory."""
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=30)
    ctid = 990_001 + os.getpid() % 1000 * 10
    eng.create(ctid, "tiny")
    d = tmp_path_factory.mktemp("named")
    try:
        yield eng, ctid, d, eng.backup(ctid, d).path.name
    finally:
        if eng.exists(ctid):
            eng.destroy(ctid)


def test_a_backup_named_in_its_directory_verifies_restores_and_deletes(named, new_ctid):
    eng, ctid, d, name = named
    assert backupdir.NAME_RE.fullmatch(name)
    assert backup.verify_named(eng, name, d)["ctid"] == ctid
    target = new_ctid()
    info = backup.restore_named(eng, name, target, d)
    assert info.ctid == target and eng.exists(target)
    copy = d / name.replace(".tar.zst", "-9.tar.zst")
    copy.write_bytes((d / name).read_bytes())
    backupdir.delete_named(eng, copy.name, d)
    assert not copy.exists() and (d / name).exists()
    with pytest.raises(NotFound, match="does not exist in"):
        backupdir.delete_named(eng, copy.name, d)


BAD_NAMES = {
    "../x": "is a path",
    "../ve-1-20260101-000000.tar.zst": "is a path",
    "/etc/passwd": "is an absolute path",
    "ve-1-20260101-000000.tar.zst\0": "NUL",
    "passwd": "is not the name of a backup",
    "ve-1-20260101-000000.tar.zst\n": "is not the name of a backup",
    "..": "is a path",
    "": "give the file name",
}


@pytest.mark.parametrize("bad", sorted(BAD_NAMES), ids=repr)
def test_a_name_that_is_no_backup_name_is_refused(named, bad):
    eng, _, d, _ = named
    for call in (lambda: backup.verify_named(eng, bad, d), lambda: backup.restore_named(eng, bad, 4243, d),
                 lambda: backupdir.delete_named(eng, bad, d)):
        with pytest.raises(InvalidInput, match=BAD_NAMES[bad]):
            call()
    assert Path("/etc/passwd").exists()


def test_a_symlink_or_fifo_in_the_backup_directory_is_refused(named, new_ctid, tmp_path):
    eng, _, d, name = named
    secret = tmp_path / "secret"
    secret.write_bytes((d / name).read_bytes())  # even a valid backup elsewhere is not followed
    link, fifo = d / "ve-1-20260101-000000.tar.zst", d / "ve-2-20260101-000000.tar.zst"
    link.symlink_to(secret)
    os.mkfifo(fifo)
    try:
        for what, n in (("symbolic link", link.name), ("not a regular file", fifo.name)):
            with pytest.raises(InvalidInput, match=what):
                backup.verify_named(eng, n, d)
            with pytest.raises(InvalidInput, match=what):
                backup.restore_named(eng, n, new_ctid(), d)
            with pytest.raises(InvalidInput, match=what):
                backupdir.delete_named(eng, n, d)
        assert secret.exists() and os.path.lexists(link) and fifo.exists()
    finally:
        link.unlink()
        fifo.unlink()


def test_a_backup_directory_that_is_a_symlink_or_writable_by_others_is_refused(named, tmp_path):
    eng, _, d, name = named
    alias = tmp_path / "alias"
    alias.symlink_to(d)
    with pytest.raises(InvalidInput, match="is a symbolic link"):
        backup.verify_named(eng, name, alias)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(InvalidInput, match="may be written by others"):
        backup.verify_named(eng, name, open_dir)
