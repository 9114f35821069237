"""Compare storage and disk-quota designs for VE roots: cost as VEs add up, and whether the quota holds.

    sudo .venv/bin/python bench/storage_bench.py [--sizes 0,100,250,500,1000] [--budget 420]
                                                 [--designs btrfs-bare,btrfs-qgroup,...] [--limit-mb 128]

Each design gets its own loop-backed file system under /var/tmp, a synthetic template tree
(2,000 files, ~20 MB), and VE roots made from it one after another. At each N in --sizes it
times, with N roots already there (each with a quota set and some files written in it):

    create    one more root: snapshot / overlay mount / reflinked image + mount, quota included
    tx        a 4 KiB write + fsync + chmod in the newest root (what every open/chmod waits on)
    setq      changing one root's quota
    usage     reading the usage of all N roots (what the panel's reconcile needs): one sysfs
              file per VE (btrfs) or statfs per mount; usage_ts: one quota-tree search (btrfs)

and the ratio of create against the bare operation (a plain btrfs snapshot on a pool without
quota, at the same N). A design that takes more than --budget seconds to grow stops there.
Then each design faces a hostile root (in a user namespace, so it has no CAP_SYS_RESOURCE on
the host, as in an unprivileged VE) that writes past its limit, fallocates, makes sparse files,
many small files, hard links, reflinks, a nested subvolume and a project-id change.

Designs:
    btrfs-bare    snapshot of the template subvolume, no quota (the bare operation)
    btrfs-qgroup  today's engine: snapshot + qgroup referenced limit (full qgroups)
    btrfs-squota  snapshot + limit under btrfs simple quotas, switched on with the ioctl
                  (BTRFS_IOC_QUOTA_CTL, cmd 4) since Debian 12's btrfs-progs 6.2 cannot
    overlay-squota  overlayfs: the template dir as lower, upper+work in a per-VE subvolume with a squota limit
    ext4-overlay  overlayfs: shared template as lower, per-VE upper on ext4 with a project quota
                  (skipped where the kernel lacks CONFIG_QFMT_V2, as this one does)
    image-ext4    per-VE ext4 image reflinked from a template image on a quota-less btrfs, loop-mounted

Everything runs in a private mount namespace (unshare(CLONE_NEWNS)), so mounts die with the process; loop devices
and files are removed at the end, even on failure. XFS project quotas are not measured:
this kernel is built without CONFIG_XFS_QUOTA.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --- ioctls ---------------------------------------------------------------------------------


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


_IOW, _IOR, _IOWR = 1, 2, 3
BTRFS_IOC_SUBVOL_CREATE = _ioc(_IOW, 0x94, 14, 4096)
BTRFS_IOC_SNAP_CREATE_V2 = _ioc(_IOW, 0x94, 23, 4096)
BTRFS_IOC_INO_LOOKUP = _ioc(_IOWR, 0x94, 18, 4096)
BTRFS_IOC_TREE_SEARCH = _ioc(_IOWR, 0x94, 17, 4096)
BTRFS_QUOTA_TREE_OBJECTID, BTRFS_QGROUP_INFO_KEY = 8, 242
BTRFS_IOC_FS_INFO = _ioc(_IOR, 0x94, 31, 1024)
BTRFS_IOC_QUOTA_CTL = _ioc(_IOWR, 0x94, 40, 16)
BTRFS_IOC_QGROUP_LIMIT = _ioc(_IOR, 0x94, 43, 48)
BTRFS_IOC_QUOTA_RESCAN_WAIT = _ioc(0, 0x94, 46, 0)
FICLONE = _ioc(_IOW, 0x94, 9, 4)
FS_IOC_FSGETXATTR = _ioc(_IOR, ord("X"), 31, 28)
FS_IOC_FSSETXATTR = _ioc(_IOW, ord("X"), 32, 28)
FS_XFLAG_PROJINHERIT = 0x200
QUOTA_CTL_ENABLE, QUOTA_CTL_ENABLE_SIMPLE = 1, 4
QGROUP_LIMIT_MAX_RFER = 1

SYS_QUOTACTL_FD = 443  # x86_64
Q_GETQUOTA, Q_SETQUOTA = 0x800007, 0x800008
PRJQUOTA = 2
QIF_BLIMITS, QIF_ILIMITS = 1, 4
DQBLK = struct.Struct("QQQQQQQQI4x")  # struct if_dqblk

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

MiB = 1 << 20
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 0x4000, 1 << 18


def dir_ioctl(path, request: int, buf) -> bytearray:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, buf)
        return buf
    finally:
        os.close(fd)


def snapshot(src: Path, dst: Path) -> None:
    """BTRFS_IOC_SNAP_CREATE_V2: a writable snapshot of ``src`` at ``dst``."""
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(4096)
        struct.pack_into("q", buf, 0, sfd)
        name = dst.name.encode()
        buf[56:56 + len(name)] = name
        dir_ioctl(dst.parent, BTRFS_IOC_SNAP_CREATE_V2, buf)
    finally:
        os.close(sfd)


def subvol_create(path: Path) -> None:
    buf = bytearray(4096)
    name = path.name.encode()
    buf[8:8 + len(name)] = name
    dir_ioctl(path.parent, BTRFS_IOC_SUBVOL_CREATE, buf)


def subvol_id(path: Path) -> int:
    buf = bytearray(4096)
    struct.pack_into("QQ", buf, 0, 0, 256)
    return struct.unpack_from("Q", dir_ioctl(path, BTRFS_IOC_INO_LOOKUP, buf), 0)[0]


def btrfs_fsid(path: Path) -> str:
    import uuid
    return str(uuid.UUID(bytes=bytes(dir_ioctl(path, BTRFS_IOC_FS_INFO, bytearray(1024))[16:32])))


def qgroup_usage_all(path: Path) -> dict[int, int]:
    """{subvolume id: referenced bytes} of every level-0 qgroup, from the quota tree in a few ioctls.

    What ``btrfs qgroup show`` reads: BTRFS_IOC_TREE_SEARCH over the QGROUP_INFO items
    (key 0, 242, qgroupid), 55 to a call, instead of one sysfs file per VE.
    """
    out: dict[int, int] = {}
    min_offset = 0
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            buf = bytearray(4096)
            struct.pack_into("QQQQQQQIII", buf, 0, BTRFS_QUOTA_TREE_OBJECTID, 0, 0, min_offset, (1 << 48) - 1,
                             0, (1 << 64) - 1, BTRFS_QGROUP_INFO_KEY, BTRFS_QGROUP_INFO_KEY, 4096)
            fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, buf)
            nr = struct.unpack_from("I", buf, 64)[0]
            if nr == 0:
                return out
            pos, offset = 104, 0
            for _ in range(nr):
                _, _, offset, typ, length = struct.unpack_from("QQQII", buf, pos)
                pos += 32
                if typ == BTRFS_QGROUP_INFO_KEY:
                    out[offset] = struct.unpack_from("Q", buf, pos + 8)[0]
                pos += length
            min_offset = offset + 1
    finally:
        os.close(fd)


def quota_ctl(path: Path, cmd: int) -> None:
    dir_ioctl(path, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("QQ", cmd, 0)))


def qgroup_limit(path: Path, limit: int) -> None:
    """BTRFS_IOC_QGROUP_LIMIT on the subvolume at ``path`` (qgroupid 0 = that subvolume)."""
    dir_ioctl(path, BTRFS_IOC_QGROUP_LIMIT, bytearray(struct.pack("QQQQQQ", 0, QGROUP_LIMIT_MAX_RFER, limit, 0, 0, 0)))


def syncfs(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.syncfs(fd)
    finally:
        os.close(fd)


def set_projid(path: Path, projid: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(28)
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
        xflags = struct.unpack_from("I", buf, 0)[0] | FS_XFLAG_PROJINHERIT
        struct.pack_into("I", buf, 0, xflags)
        struct.pack_into("I", buf, 12, projid)
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, buf)
    finally:
        os.close(fd)


def quotactl(fs: Path, cmd: int, qid: int, buf: ctypes.Array) -> None:
    fd = os.open(fs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syscall(SYS_QUOTACTL_FD, fd, (cmd << 8) | PRJQUOTA, qid, buf) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"quotactl_fd: {os.strerror(e)}")
    finally:
        os.close(fd)


def prj_set(fs: Path, projid: int, limit: int, inodes: int = 0) -> None:
    buf = ctypes.create_string_buffer(DQBLK.pack(limit // 1024, limit // 1024, 0, inodes, inodes, 0, 0, 0,
                                                 QIF_BLIMITS | QIF_ILIMITS), DQBLK.size)
    quotactl(fs, Q_SETQUOTA, projid, buf)


def prj_get(fs: Path, projid: int) -> tuple[int, int]:
    """(bytes used, inodes used) of a project."""
    buf = ctypes.create_string_buffer(DQBLK.size)
    quotactl(fs, Q_GETQUOTA, projid, buf)
    v = DQBLK.unpack(buf.raw)
    return v[2], v[5]


def sh(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# --- the tree every design starts from ------------------------------------------------------

def make_template_tree(top: Path) -> None:
    """2,000 files in 40 dirs: 1,500 small (1-4 KiB) and 500 of 16-64 KiB, about 20 MB."""
    rnd = os.urandom(64 * 1024)
    for d in range(40):
        sub = top / "usr" / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(50):
            size = (1024 + (f * 61 % 3072)) if f < 38 else (16384 + (f * 977 % 49152))
            (sub / f"f{f}").write_bytes(rnd[:size])
    (top / "etc").mkdir()
    (top / "etc" / "hostname").write_text("template\n")
    (top / "var" / "log").mkdir(parents=True)


def populate(root: Path, i: int) -> None:
    """What a VE does to its root early on: a dozen new files, two template files changed."""
    rnd = os.urandom(32 * 1024)
    (root / "var" / "log" / "boot").mkdir(exist_ok=True)
    for k in range(12):
        (root / "var" / "log" / "boot" / f"log{k}").write_bytes(rnd)
    (root / "etc" / "hostname").write_text(f"ve{i}\n")
    with open(root / "usr" / "d0" / "f40", "ab") as f:
        f.write(rnd[:4096])


def tx_probe(root: Path) -> None:
    p = root / "var" / "log" / "probe"
    with open(p, "wb") as f:
        f.write(b"x" * 4096)
        os.fsync(f.fileno())
    os.chmod(p, 0o640)


# --- designs --------------------------------------------------------------------------------

class Design:
    name = "base"
    has_quota = True

    def __init__(self, work: Path, limit: int):
        self.work = work
        self.limit = limit
        self.roots: list[Path] = []

    def loop_fs(self, fstype: str, size: str, mnt: Path, mkfs: list[str], opts: str = "noatime") -> None:
        img = self.work / f"{mnt.name}.img"
        with open(img, "wb") as f:
            f.truncate(_size(size))
        sh(*mkfs, str(img))
        mnt.mkdir()
        sh("mount", "-t", fstype, "-o", f"loop,{opts}", str(img), str(mnt))

    def setup(self) -> None:
        raise NotImplementedError

    def create(self, i: int) -> Path:
        """Make root number ``i`` with the quota set; return the directory the VE sees as /."""
        raise NotImplementedError

    def set_quota(self, i: int, limit: int) -> None:
        raise NotImplementedError

    def usage_all(self) -> list[int]:
        raise NotImplementedError

    def usage(self, i: int) -> int:
        raise NotImplementedError

    def sync(self) -> None:
        syncfs(self.roots[-1] if self.roots else self.work)


def _size(s: str) -> int:
    return int(s[:-1]) << {"M": 20, "G": 30, "T": 40}[s[-1]]


class BtrfsDesign(Design):
    quota_cmd: int | None = None

    def setup(self) -> None:
        self.pool = self.work / "pool"
        self.loop_fs("btrfs", "64G", self.pool, ["mkfs.btrfs", "-q", "-f"])
        if self.quota_cmd:
            quota_ctl(self.pool, self.quota_cmd)
            with contextlib.suppress(OSError):
                dir_ioctl(self.pool, BTRFS_IOC_QUOTA_RESCAN_WAIT, bytearray(0))
        self.tmpl = self.pool / "template"
        subvol_create(self.tmpl)
        make_template_tree(self.tmpl)
        (self.pool / "private").mkdir()
        syncfs(self.pool)
        self.qdir = Path("/sys/fs/btrfs") / btrfs_fsid(self.pool) / "qgroups"
        self.ids: list[int] = []

    def create(self, i: int) -> Path:
        root = self.pool / "private" / str(i)
        snapshot(self.tmpl, root)
        if self.quota_cmd:
            qgroup_limit(root, self.limit)
        self.ids.append(subvol_id(root) if self.quota_cmd else 0)
        self.roots.append(root)
        return root

    def set_quota(self, i: int, limit: int) -> None:
        qgroup_limit(self.roots[i], limit)

    def usage(self, i: int) -> int:
        return int((self.qdir / f"0_{self.ids[i]}" / "referenced").read_text())

    def usage_all(self) -> list[int]:
        return [int((self.qdir / f"0_{sid}" / "referenced").read_text()) for sid in self.ids]

    def usage_all_search(self) -> list[int]:
        found = qgroup_usage_all(self.pool)
        return [found[sid] for sid in self.ids]


class BtrfsBare(BtrfsDesign):
    name = "btrfs-bare"
    has_quota = False


class BtrfsQgroup(BtrfsDesign):
    name = "btrfs-qgroup"
    quota_cmd = QUOTA_CTL_ENABLE


class BtrfsSquota(BtrfsDesign):
    name = "btrfs-squota"
    quota_cmd = QUOTA_CTL_ENABLE_SIMPLE


class Ext4Overlay(Design):
    """Template as overlay lower dir; each VE's upper+work dir in its own ext4 project (id 1000+i)."""

    name = "ext4-overlay"

    def setup(self) -> None:
        self.fs = self.work / "ext4"
        self.loop_fs("ext4", "64G", self.fs,
                     ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "quota,project", "-E", "quotatype=prjquota"],
                     opts="noatime,prjquota")
        self.tmpl = self.fs / "template"
        self.tmpl.mkdir()
        make_template_tree(self.tmpl)
        (self.fs / "ve").mkdir()
        self.mnt = self.work / "roots"
        self.mnt.mkdir()

    def create(self, i: int) -> Path:
        d = self.fs / "ve" / str(i)
        d.mkdir()
        set_projid(d, 1000 + i)
        prj_set(self.fs, 1000 + i, self.limit)
        (d / "upper").mkdir()
        (d / "work").mkdir()
        root = self.mnt / str(i)
        root.mkdir()
        mount_overlay(self.tmpl, d, root)
        self.roots.append(root)
        return root

    def set_quota(self, i: int, limit: int) -> None:
        prj_set(self.fs, 1000 + i, limit)

    def usage(self, i: int) -> int:
        return prj_get(self.fs, 1000 + i)[0]

    def usage_all(self) -> list[int]:
        return [prj_get(self.fs, 1000 + i)[0] for i in range(len(self.roots))]


class OverlaySquota(BtrfsSquota):
    """Template as a shared overlay lower dir; each VE's upper+work dir in its own subvolume with a squota limit.

    What ext4-overlay would be where ext4 project quotas are missing: unchanged template files
    stay one inode for all VEs, so their page cache is shared (a snapshot gives each VE its own).
    """

    name = "overlay-squota"

    def setup(self) -> None:
        super().setup()
        self.mnt = self.work / "roots"
        self.mnt.mkdir()
        self.uppers: list[Path] = []

    def create(self, i: int) -> Path:
        d = self.pool / "private" / str(i)
        subvol_create(d)
        qgroup_limit(d, self.limit)
        (d / "upper").mkdir()
        (d / "work").mkdir()
        root = self.mnt / str(i)
        root.mkdir()
        mount_overlay(self.tmpl, d, root)
        self.ids.append(subvol_id(d))
        self.uppers.append(d)
        self.roots.append(root)
        return root

    def set_quota(self, i: int, limit: int) -> None:
        qgroup_limit(self.uppers[i], limit)


def mount_overlay(lower: Path, d: Path, root: Path) -> None:
    rc = libc.mount(b"overlay", str(root).encode(), b"overlay", 0,
                    f"lowerdir={lower},upperdir={d}/upper,workdir={d}/work".encode())
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount overlay {root}: {os.strerror(e)}")


class ImageExt4(Design):
    """A per-VE ext4 image (like OpenVZ's ploop): reflink of a template image on quota-less btrfs, loop-mounted."""

    name = "image-ext4"

    def setup(self) -> None:
        self.pool = self.work / "pool"
        self.loop_fs("btrfs", "64G", self.pool, ["mkfs.btrfs", "-q", "-f"])
        src = self.work / "tree"
        src.mkdir()
        make_template_tree(src)
        self.tmpl = self.pool / "template.img"
        with open(self.tmpl, "wb") as f:
            f.truncate(self.limit)
        sh("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", "-d", str(src), str(self.tmpl))
        shutil.rmtree(src)
        (self.pool / "private").mkdir()
        self.mnt = self.work / "roots"
        self.mnt.mkdir()
        self.devs: list[str] = []
        self.fds: list[int] = []

    def create(self, i: int) -> Path:
        img = self.pool / "private" / f"{i}.img"
        with open(self.tmpl, "rb") as s, open(img, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        dev = sh("losetup", "--find", "--show", "--direct-io=on", str(img)).strip()
        self.devs.append(dev)
        root = self.mnt / str(i)
        root.mkdir()
        if libc.mount(dev.encode(), str(root).encode(), b"ext4", 0, b"discard") != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount {dev} on {root}: {os.strerror(e)}")
        self.roots.append(root)
        return root

    def set_quota(self, i: int, limit: int) -> None:
        """Grow (only: shrinking ext4 needs it unmounted) the image, the loop device and the fs."""
        img = self.pool / "private" / f"{i}.img"
        with open(img, "r+b") as f:
            f.truncate(max(limit, img.stat().st_size))
        sh("losetup", "-c", self.devs[i])
        sh("resize2fs", "-f", self.devs[i])

    def usage(self, i: int) -> int:
        st = os.statvfs(self.roots[i])
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def usage_all(self) -> list[int]:
        out = []
        for r in self.roots:
            st = os.statvfs(r)
            out.append((st.f_blocks - st.f_bfree) * st.f_frsize)
        return out

    def teardown(self) -> None:
        for r in reversed(self.roots):
            libc.umount2(str(r).encode(), 0)
        for dev in self.devs:
            subprocess.run(["losetup", "-d", dev], capture_output=True)


DESIGNS = {d.name: d for d in (BtrfsBare, BtrfsQgroup, BtrfsSquota, OverlaySquota, Ext4Overlay, ImageExt4)}


# --- the hostile root -----------------------------------------------------------------------

def hostile(test: str, root: str, limit: int) -> dict:
    """Run one escape attempt inside ``root``; called in a user namespace (no host CAP_SYS_RESOURCE)."""
    root_p = Path(root)
    out: dict = {}
    chunk = os.urandom(MiB)

    def fill(path: Path, upto: int) -> int:
        """Write 1 MiB chunks to ``upto`` bytes; return bytes written before the error (or all)."""
        n = 0
        try:
            with open(path, "wb") as f:
                while n < upto:
                    f.write(chunk)
                    n += MiB
                    if n % (16 * MiB) == 0:
                        os.fsync(f.fileno())
                os.fsync(f.fileno())
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        return n

    if test == "write":
        out["written_mb"] = fill(root_p / "big", 2 * limit) // MiB
    elif test == "fallocate":
        fd = os.open(root_p / "falloc", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, 2 * limit)
            out["allocated_mb"] = 2 * limit // MiB
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            os.close(fd)
    elif test == "sparse":
        with open(root_p / "sparse", "wb") as f:
            f.truncate(1 << 40)
            f.seek((1 << 40) - 1)
            f.write(b"x")
        out["apparent_gb"] = (1 << 40) >> 30
        out["written_mb"] = fill(root_p / "after-sparse", 2 * limit) // MiB
    elif test == "small-files":
        n, t0 = 0, time.monotonic()
        try:
            while n < 200_000 and time.monotonic() - t0 < 20:
                d = root_p / "many" / str(n // 1000)
                if n % 1000 == 0:
                    d.mkdir(parents=True)
                (d / str(n)).write_bytes(b"s" * 100)
                n += 1
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        out["files"] = n
    elif test == "hardlink":
        # Link a file that came with the template many times, then grow it through one of the links.
        src = root_p / "usr" / "d1" / "f45"
        (root_p / "links").mkdir()
        try:
            for k in range(1000):
                os.link(src, root_p / "links" / str(k))
            out["links"] = 1000
        except OSError as e:
            out["link_error"] = errno.errorcode.get(e.errno, str(e.errno))
        target = root_p / "links" / "0" if (root_p / "links" / "0").exists() else src
        n = 0
        try:
            with open(target, "ab") as f:
                while n < 2 * limit:
                    f.write(chunk)
                    n += MiB
                    if n % (16 * MiB) == 0:
                        os.fsync(f.fileno())
                os.fsync(f.fileno())
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        out["appended_mb"] = n // MiB
    elif test == "reflink":
        base = root_p / "r0"
        out["base_mb"] = fill(base, limit // 4) // MiB
        clones = 0
        try:
            for k in range(1, 13):
                with open(base, "rb") as s, open(root_p / f"r{k}", "wb") as d:
                    fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
                clones += 1
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        out["clones"] = clones
        out["apparent_mb"] = out["base_mb"] * (clones + 1)
    elif test == "subvolume":
        try:
            subvol_create(root_p / "nest")
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
            return out
        out["written_mb"] = fill(root_p / "nest" / "big", 2 * limit) // MiB
    elif test == "projid":
        d = root_p / "myproj"
        d.mkdir()
        try:
            set_projid(d, 0)
            out["changed"] = True
        except OSError as e:
            out["error"] = errno.errorcode.get(e.errno, str(e.errno))
            return out
        out["written_mb"] = fill(d / "big", 2 * limit) // MiB
    return out


HOSTILE_TESTS = ("write", "fallocate", "sparse", "small-files", "hardlink", "reflink", "subvolume", "projid")


def run_hostile(design: Design, test: str, index: int) -> dict:
    root = design.create(index)
    populate(root, index)
    design.sync()
    before = design.usage(len(design.roots) - 1) if design.has_quota else None
    p = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, __file__,
                        "--hostile", test, str(root), str(design.limit)], capture_output=True, text=True,
                       timeout=600)
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = {"crash": (p.stderr or p.stdout).strip()[-200:]}
    design.sync()
    if design.has_quota:
        res["counted_mb"] = round((design.usage(len(design.roots) - 1) - before) / MiB, 1)
    return res


# --- the run --------------------------------------------------------------------------------

def grow_and_measure(design: Design, sizes: list[int], budget: float, log, write: bool = True) -> dict:
    rows = {}
    t_start = time.monotonic()
    for n in sizes:
        while len(design.roots) < n:
            if time.monotonic() - t_start > budget:
                log(f"  {design.name}: budget of {budget:.0f} s spent at N={len(design.roots)}")
                return rows
            i = len(design.roots)
            design.create(i)
            if write:
                populate(design.roots[i], i)
        creates = []
        for _ in range(5):
            i = len(design.roots)
            creates.append(timed(design.create, i))
            if write:
                populate(design.roots[i], i)
        tx = statistics.median(timed(tx_probe, design.roots[-1]) for _ in range(3))
        row = {"create": statistics.median(creates), "tx": tx}
        if design.has_quota:
            try:
                row["setq"] = statistics.median(
                    timed(design.set_quota, k, design.limit + (j + 1) * MiB) for j, k in enumerate((0, 1, 2)))
            except RuntimeError as e:
                # Online ext4 grow needs CAP_SYS_RESOURCE, which a sandboxed root may lack.
                row["setq"] = None
                log(f"  {design.name}: changing a quota failed: {str(e).splitlines()[-1]}")
            design.sync()
            row["usage"] = statistics.median(timed(design.usage_all) for _ in range(3))
            if hasattr(design, "usage_all_search"):
                if design.usage_all_search() != design.usage_all():
                    log(f"  {design.name}: quota tree and sysfs differ (a commit in between?)")
                row["usage_ts"] = statistics.median(timed(design.usage_all_search) for _ in range(3))
        rows[n] = row
        log(f"  {design.name} N={n}: " + ", ".join(f"{k} {ms(v)} ms" for k, v in row.items())
            + f"  (grown in {time.monotonic() - t_start:.0f} s)")
    return rows


def ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 1000:.2f}" if v < 0.001 else f"{v * 1000:.1f}" if v < 10 else f"{v:.0f}s"


def print_tables(results: dict, hostile_res: dict, sizes: list[int]) -> None:
    bare = results.get("btrfs-bare", {})
    print("\n## Time to make one more VE root (ms, median of 5) and ratio to a bare btrfs snapshot at the same N\n")
    print("| design | " + " | ".join(f"N={n}" for n in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for name, rows in results.items():
        cells = []
        for n in sizes:
            r = rows.get(n)
            if r is None:
                cells.append("— (budget)")
                continue
            b = bare.get(n, {}).get("create")
            cells.append(f"{ms(r['create'])}" + (f" ({r['create'] / b:.1f}x)" if b and name != "btrfs-bare" else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    for key, title in (("tx", "4 KiB write + fsync + chmod in the newest root (ms)"),
                       ("setq", "change one root's quota (ms)"),
                       ("usage", "read the usage of all N roots (ms): sysfs file per VE / statfs per mount"),
                       ("usage_ts", "read the usage of all N roots (ms): one quota-tree search (btrfs)")):
        print(f"\n## {title}\n")
        print("| design | " + " | ".join(f"N={n}" for n in sizes) + " |")
        print("| --- |" + " ---: |" * len(sizes))
        for name, rows in results.items():
            print(f"| {name} | " + " | ".join(ms(rows.get(n, {}).get(key)) if n in rows else "—"
                                             for n in sizes) + " |")
    if not hostile_res:
        return
    print("\n## A hostile root (user namespace) against the quota; counted = growth of the VE's usage (MiB)\n")
    tests = [t for t in HOSTILE_TESTS if any(t in r for r in hostile_res.values())]
    print("| test | " + " | ".join(hostile_res) + " |")
    print("| --- |" + " --- |" * len(hostile_res))
    for t in tests:
        cells = []
        for name in hostile_res:
            r = hostile_res[name].get(t)
            cells.append("n/a" if r is None else ", ".join(f"{k} {v}" for k, v in r.items()))
        print(f"| {t} | " + " | ".join(cells) + " |")


def kernel_lacks() -> str | None:
    """Name the quota options this kernel was built without, from /proc/config.gz."""
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return None
    missing = [o for o in ("CONFIG_QFMT_V2", "CONFIG_XFS_QUOTA") if f"{o}=y" not in config and f"{o}=m" not in config]
    return f"kernel built without {', '.join(missing)}" if missing else None


def cleanup(work: Path, designs: list[Design]) -> None:
    for d in designs:
        with contextlib.suppress(Exception):
            if hasattr(d, "teardown"):
                d.teardown()
    # Unmount everything under the work dir, deepest first (only this namespace sees them anyway).
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt.startswith(str(work) + "/"):
                mounts.append(mnt)
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    # Detach any loop device still backed by a file of ours.
    out = subprocess.run(["losetup", "-a", "-O", "NAME,BACK-FILE", "-n", "-l"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(work)):
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,100,250,500,1000")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds each design may spend growing")
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--limit-mb", type=int, default=128)
    ap.add_argument("--no-hostile", action="store_true")
    ap.add_argument("--no-writes", action="store_true", help="write nothing in the roots (isolates the cost of N itself)")
    ap.add_argument("--hostile", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hostile:
        test, root, limit = args.hostile
        print(json.dumps(hostile(test, root, int(limit))))
        return 0
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    # A private mount namespace for this process and its children: every mount made here goes
    # away with it, and no other process on the host sees a thousand of them meanwhile.
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        print(f"cannot make a private mount namespace: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    # SIGTERM becomes SystemExit, so the cleanup in the finally below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    limit = args.limit_mb * MiB
    work = Path(tempfile.mkdtemp(prefix="storage-bench-", dir="/var/tmp"))
    made: list[Design] = []
    results: dict = {}
    hostile_res: dict = {}
    skipped: dict = {}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        for name in args.designs.split(","):
            d = DESIGNS[name](work / name, limit)
            (work / name).mkdir()
            made.append(d)
            t0 = time.monotonic()
            try:
                d.setup()
            except (RuntimeError, OSError) as e:
                # ext4 project quotas need CONFIG_QUOTA + CONFIG_QFMT_V2, which some kernels (this one) lack.
                log(f"{name}: cannot be set up here: {e}")
                skipped[name] = kernel_lacks() or str(e).splitlines()[0][-160:]
                cleanup(work / name, [d])
                made.remove(d)
                continue
            log(f"{name}: set up in {time.monotonic() - t0:.1f} s")
            results[name] = grow_and_measure(d, sizes, args.budget, log, write=not args.no_writes)
            if not args.no_hostile and d.has_quota:
                hostile_res[name] = {}
                for test in HOSTILE_TESTS:
                    if test == "subvolume" and not isinstance(d, BtrfsDesign | Ext4Overlay):
                        continue
                    if test == "projid" and not isinstance(d, Ext4Overlay):
                        continue
                    t0 = time.monotonic()
                    hostile_res[name][test] = run_hostile(d, test, len(d.roots))
                    log(f"  {name} hostile {test}: {hostile_res[name][test]} ({time.monotonic() - t0:.1f} s)")
            # Free this design's loop device and disk before the next one.
            cleanup(work / name, [d])
            made.remove(d)
        print(f"\nstorage_bench: template 2,000 files / ~20 MB, each VE writes ~400 KB, limit "
              f"{args.limit_mb} MiB; kernel {os.uname().release}; btrfs-progs "
              f"{sh('btrfs', '--version').split()[-1]}")
        print_tables(results, hostile_res, sizes)
        for name, why in skipped.items():
            print(f"\n{name}: not measured, setup failed: {why}")
    finally:
        cleanup(work, made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
