"""Per-VE usage accounting read straight from cgroup and btrfs sysfs files (no subprocess).

``UsageReader.read_all()`` reads every VE of a root in one pass: about twenty small files per
running VE, plus two sysfs files and one ioctl for its disk usage, so a node with a hundred VEs
can be polled every second (bench/resources_bench.py measures it).
"""

from __future__ import annotations

import fcntl
import os
import struct
import uuid
from pathlib import Path

from . import btrfs, cgroups
from .cgroups import flat_keyed, read_fast
from .layout import Layout

UNLIMITED = 1 << 62  # v1 writes "no limit" as 9223372036854771712; anything this big means none

# btrfs ioctls (linux/btrfs.h): _IOWR(0x94, 18, ino_lookup_args[4096]), _IOR(0x94, 31, fs_info_args[1024])
_BTRFS_IOC_INO_LOOKUP = (3 << 30) | (4096 << 16) | (0x94 << 8) | 18
_BTRFS_IOC_FS_INFO = (2 << 30) | (1024 << 16) | (0x94 << 8) | 31
_BTRFS_FIRST_FREE_OBJECTID = 256

# The files read per VE, by cgroup version: (controller, file, key in the raw dict).
V1_FILES = [
    ("cpuacct", "cpuacct.usage", "cpu_ns"),
    ("cpu", "cpu.stat", "cpu_stat"),
    ("memory", "memory.usage_in_bytes", "mem"),
    ("memory", "memory.max_usage_in_bytes", "mem_peak"),
    ("memory", "memory.limit_in_bytes", "mem_max"),
    ("memory", "memory.failcnt", "mem_failcnt"),
    ("memory", "memory.memsw.usage_in_bytes", "memsw"),
    ("memory", "memory.memsw.max_usage_in_bytes", "memsw_peak"),
    ("memory", "memory.memsw.limit_in_bytes", "memsw_max"),
    ("memory", "memory.memsw.failcnt", "memsw_failcnt"),
    ("memory", "memory.oom_control", "oom"),
    ("memory", "memory.stat", "mem_stat"),
    ("memory", "memory.kmem.usage_in_bytes", "kmem"),
    ("memory", "memory.kmem.max_usage_in_bytes", "kmem_peak"),
    ("pids", "pids.current", "pids"),
    ("pids", "pids.peak", "pids_peak"),
    ("pids", "pids.max", "pids_max"),
    ("pids", "pids.events", "pids_events"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive", "io_bytes"),
    ("blkio", "blkio.throttle.io_serviced_recursive", "io_ops"),
]
V2_FILES = [
    ("cpu", "cpu.stat", "cpu_stat"),
    ("memory", "memory.current", "mem"),
    ("memory", "memory.peak", "mem_peak"),
    ("memory", "memory.max", "mem_max"),
    ("memory", "memory.events", "mem_events"),
    ("memory", "memory.swap.current", "swap"),
    ("memory", "memory.swap.peak", "swap_peak"),
    ("memory", "memory.swap.max", "swap_max"),
    ("memory", "memory.swap.events", "swap_events"),
    ("memory", "memory.stat", "mem_stat"),
    ("pids", "pids.current", "pids"),
    ("pids", "pids.peak", "pids_peak"),
    ("pids", "pids.max", "pids_max"),
    ("pids", "pids.events", "pids_events"),
    ("io", "io.stat", "io_stat"),
]


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n >= UNLIMITED else n


def _sum_v1_blkio(text: str | None) -> tuple[int | None, int | None]:
    """(read, write) totals over devices from a blkio.throttle.io_service_* file."""
    if text is None:
        return None, None
    r = w = 0
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                r += int(parts[2])
            elif parts[1] == "Write":
                w += int(parts[2])
    return r, w


def _sum_v2_io(text: str | None) -> dict[str, int | None]:
    if text is None:
        return dict.fromkeys(("rbytes", "wbytes", "rios", "wios"))
    out: dict[str, int | None] = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in (text or "").splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key in out and value.isdigit():
                out[key] = (out[key] or 0) + int(value)
    return out


def _dir_ioctl(path: Path, request: int, buf: bytearray) -> bytearray | None:
    """Run a btrfs ioctl on the directory ``path``; return the filled buffer, None if it fails."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.ioctl(fd, request, buf)
        return buf
    except OSError:
        return None
    finally:
        os.close(fd)


def subvolume_id(path: Path) -> int | None:
    """The btrfs subvolume id of the subvolume whose root is ``path`` (None if not btrfs)."""
    buf = bytearray(4096)
    struct.pack_into("QQ", buf, 0, 0, _BTRFS_FIRST_FREE_OBJECTID)
    out = _dir_ioctl(path, _BTRFS_IOC_INO_LOOKUP, buf)
    return struct.unpack_from("Q", out, 0)[0] if out is not None else None


def btrfs_fsid(path: Path) -> str | None:
    out = _dir_ioctl(path, _BTRFS_IOC_FS_INFO, bytearray(1024))
    return str(uuid.UUID(bytes=bytes(out[16:32]))) if out is not None else None


def qgroups_dir(pool: Path) -> Path | None:
    """/sys/fs/btrfs/<fsid>/qgroups of the pool, when the pool is btrfs with quota enabled."""
    fsid = btrfs_fsid(pool)
    if fsid is None:
        return None
    d = Path("/sys/fs/btrfs") / fsid / "qgroups"
    return d if d.is_dir() else None


def quota_state(pool: Path) -> dict:
    """Whether the pool's qgroups are on and their numbers trustworthy, from sysfs (no subprocess).

    ``consistent`` is False when the kernel marked the qgroup data inconsistent: it then stops
    counting writes, so no limit holds until a rescan (StorageBtrfs.check_quota runs one). It is
    None where the kernel has no ``qgroups/inconsistent`` file (before 6.1) or quota is off.
    ``mode`` is "qgroup" (full qgroups), "squota" (simple quotas) or None when quota is off.
    """
    fsid = btrfs_fsid(pool)
    out: dict = {"btrfs": fsid is not None, "enabled": False, "consistent": None, "override": False,
                 "mode": None}
    if fsid is None:
        return out
    base = Path("/sys/fs/btrfs") / fsid
    out["override"] = (read_fast(f"{base}/quota_override") or "0").strip() == "1"
    qdir = base / "qgroups"
    if not qdir.is_dir():
        return out
    out["enabled"] = (read_fast(f"{qdir}/enabled") or "1").strip() != "0"
    if out["enabled"]:  # kernels before 6.7 have no mode file: full qgroups are all they know
        out["mode"] = (read_fast(f"{qdir}/mode") or "qgroup").strip()
    flag = read_fast(f"{qdir}/inconsistent")
    if flag is not None and out["enabled"]:
        out["consistent"] = flag.strip() == "0"
    return out


def disk_usage(qdir: Path | None, subvol: Path) -> tuple[int | None, int | None]:
    """(bytes referenced, referenced limit or None) of a subvolume, from btrfs sysfs.

    The kernel updates these at each transaction commit (every 30 s at most, or on sync), so
    they can lag a burst of writes by that much.
    """
    if qdir is None:
        return None, None
    sid = subvolume_id(subvol)
    if sid is None:
        return None, None
    base = f"{qdir}/0_{sid}/"
    used = _int(read_fast(base + "referenced"))
    limit = _int(read_fast(base + "max_referenced"))
    flags = _int(read_fast(base + "limit_flags")) or 0
    if not flags & 1:  # BTRFS_QGROUP_LIMIT_MAX_RFER not set: no limit
        limit = None
    return used, limit


def disk_usage_all(pool: Path, subvols: list[Path], ids: dict[Path, int] | None = None,
                   ) -> dict[Path, tuple[int | None, int | None]]:
    """disk_usage() of many subvolumes from one quota-tree search instead of a sysfs file each.

    A thousand VEs take about a millisecond this way against 50-300 ms of sysfs reads
    (docs/storage-design.md). ``ids`` caches subvolume ids (they never change) across calls.
    Falls back to sysfs when the search fails (no CAP_SYS_ADMIN, quota off).
    """
    try:
        qgroups = btrfs.qgroup_usage_all(pool)
    except OSError:
        qdir = qgroups_dir(pool)
        return {p: disk_usage(qdir, p) for p in subvols}
    ids = {} if ids is None else ids
    out: dict[Path, tuple[int | None, int | None]] = {}
    for p in subvols:
        sid = ids.get(p)
        if sid is None and (sid := subvolume_id(p)) is not None:
            ids[p] = sid
        out[p] = qgroups.get(sid, (None, None)) if sid is not None else (None, None)
    return out


class UsageReader:
    """Read the usage of the VEs of one engine root, cheaply and repeatedly."""

    def __init__(self, layout: Layout, quota: bool = True):
        self.layout = layout
        self.quota = quota
        self._qdir: Path | None = None  # None: not found yet
        self._ids: dict[Path, int] = {}  # VE root: its subvolume id (fixed for the root's life)
        self._stamps: dict[Path, tuple[int, int]] = {}  # VE root: (inode, mtime) of its config then
        ver = cgroups.version("memory") or cgroups.version("pids") or 1
        self.version = ver
        files = V1_FILES if ver == 1 else V2_FILES
        self._keys = [key for _, _, key in files]
        # (path pattern, key), pids.current first: when it is missing the VE is not running.
        self._files: list[tuple[str, str]] = []
        for ctrl, name, key in sorted(files, key=lambda f: f[2] != "pids"):
            base = cgroups.path(ctrl, "")
            if base is not None:
                self._files.append((f"{base}/{{rel}}/{name}", key))

    def qgroups(self) -> Path | None:
        if self._qdir is None:  # look again while unknown (pool not mounted)
            found = qgroups_dir(self.layout.pool) if self.quota else None
            if found is None:
                return None
            self._qdir = found
        return self._qdir

    def quota_consistent(self) -> bool | None:
        """False while the pool's qgroup data is inconsistent (no disk limit holds then)."""
        qdir = self.qgroups()
        flag = read_fast(f"{qdir}/inconsistent") if qdir is not None else None
        return None if flag is None else flag.strip() == "0"

    def raw(self, ctid: int) -> dict[str, str | None]:
        rel = self.layout.cgroup_dir(ctid)
        out: dict[str, str | None] = dict.fromkeys(self._keys)
        for pattern, key in self._files:
            out[key] = value = read_fast(pattern.replace("{rel}", rel))
            if key == "pids" and value is None:  # no cgroup: the VE is stopped, skip the rest
                break
        return out

    def read(self, ctid: int, disk: tuple[int | None, int | None] | None = None) -> dict:
        """Usage of one VE: a flat dict of numbers (None: unknown or unlimited).

        ``disk`` is its (used, limit) when read_all() already has it from the quota tree.
        """
        u = self._from_v1(self.raw(ctid)) if self.version == 1 else self._from_v2(self.raw(ctid))
        used, limit = disk if disk is not None else disk_usage(self.qgroups(), self.layout.private(ctid))
        u["disk_bytes"], u["disk_limit_bytes"] = used, limit
        u["disk_quota_consistent"] = self.quota_consistent()
        return u

    def read_all(self, ctids: list[int] | None = None) -> dict[int, dict]:
        """Usage of every VE of the root (or of ``ctids``), read in one pass.

        The disk figures of all VEs come from one quota-tree search, not a sysfs file per VE.
        """
        if ctids is None:
            ctids = sorted(int(p.name[:-5]) for p in os.scandir(self.layout.confdir)
                           if p.name.endswith(".conf") and p.name[:-5].isdigit())
        disk: dict[Path, tuple[int | None, int | None]] = {}
        if self.qgroups() is not None and ctids:
            paths = [self.layout.private(ctid) for ctid in ctids]
            self._forget_changed_ids(ctids)
            disk = disk_usage_all(self.layout.pool, paths, self._ids)
        return {ctid: self.read(ctid, disk.get(self.layout.private(ctid))) for ctid in ctids}

    def _forget_changed_ids(self, ctids: list[int]) -> None:
        """Drop cached subvolume ids of VEs whose config changed: destroyed and made again, maybe.

        A config's stat costs no open; a changed one just means one more id lookup.
        """
        for ctid in ctids:
            root = self.layout.private(ctid)
            try:
                st = os.stat(self.layout.conf(ctid))
                stamp = (st.st_ino, st.st_mtime_ns)
            except OSError:
                stamp = (0, 0)
            if self._stamps.get(root) != stamp:
                self._stamps[root] = stamp
                self._ids.pop(root, None)
        live = {self.layout.private(ctid) for ctid in ctids}
        for gone in set(self._stamps) - live:
            del self._stamps[gone]
            self._ids.pop(gone, None)

    @staticmethod
    def _from_v1(r: dict) -> dict:
        nproc = _int(r["pids"])
        stat = flat_keyed(r["mem_stat"])
        cpu = flat_keyed(r["cpu_stat"])
        mem, memsw = _int(r["mem"]), _int(r["memsw"])
        mem_max, memsw_max = _int(r["mem_max"]), _int(r["memsw_max"])
        rbytes, wbytes = _sum_v1_blkio(r["io_bytes"])
        rios, wios = _sum_v1_blkio(r["io_ops"])
        cpu_ns = _int(r["cpu_ns"])
        return {
            "running": bool(nproc),
            "cpu_seconds": cpu_ns / 1e9 if cpu_ns is not None else None,
            "cpu_throttled": cpu.get("nr_throttled"),
            "cpu_throttled_seconds": cpu["throttled_time"] / 1e9 if "throttled_time" in cpu else None,
            "memory_bytes": mem,
            "memory_peak_bytes": _int(r["mem_peak"]),
            "memory_cache_bytes": stat.get("total_cache"),
            "memory_anon_bytes": stat.get("total_rss"),
            "memory_shmem_bytes": stat.get("total_shmem"),
            "memory_limit_bytes": mem_max,
            "memory_failcnt": _int(r["mem_failcnt"]),
            "oom_kills": flat_keyed(r["oom"]).get("oom_kill"),
            "kmem_bytes": _int(r["kmem"]),
            "kmem_peak_bytes": _int(r["kmem_peak"]),
            "swap_bytes": max(memsw - mem, 0) if memsw is not None and mem is not None else None,
            "swap_peak_bytes": None,  # v1 keeps only the peak of memory+swap
            "swap_limit_bytes": memsw_max - mem_max if memsw_max is not None and mem_max is not None else None,
            "swap_failcnt": _int(r["memsw_failcnt"]),
            "nproc": nproc,
            "nproc_peak": _int(r["pids_peak"]),
            "nproc_limit": _int(r["pids_max"]),
            "nproc_failcnt": flat_keyed(r["pids_events"]).get("max"),
            "io_read_bytes": rbytes,
            "io_write_bytes": wbytes,
            "io_read_ops": rios,
            "io_write_ops": wios,
        }

    @staticmethod
    def _from_v2(r: dict) -> dict:
        nproc = _int(r["pids"])
        stat = flat_keyed(r["mem_stat"])
        cpu = flat_keyed(r["cpu_stat"])
        events = flat_keyed(r["mem_events"])
        io = _sum_v2_io(r["io_stat"])
        return {
            "running": bool(nproc),
            "cpu_seconds": cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
            "cpu_throttled": cpu.get("nr_throttled"),
            "cpu_throttled_seconds": cpu["throttled_usec"] / 1e6 if "throttled_usec" in cpu else None,
            "memory_bytes": _int(r["mem"]),
            "memory_peak_bytes": _int(r["mem_peak"]),
            "memory_cache_bytes": stat.get("file"),
            "memory_anon_bytes": stat.get("anon"),
            "memory_shmem_bytes": stat.get("shmem"),
            "memory_limit_bytes": _int(r["mem_max"]),
            "memory_failcnt": events.get("max"),
            "oom_kills": events.get("oom_kill"),
            "kmem_bytes": stat.get("kernel"),
            "kmem_peak_bytes": None,
            "swap_bytes": _int(r["swap"]),
            "swap_peak_bytes": _int(r["swap_peak"]),
            "swap_limit_bytes": _int(r["swap_max"]),
            "swap_failcnt": flat_keyed(r["swap_events"]).get("max"),
            "nproc": nproc,
            "nproc_peak": _int(r["pids_peak"]),
            "nproc_limit": _int(r["pids_max"]),
            "nproc_failcnt": flat_keyed(r["pids_events"]).get("max"),
            "io_read_bytes": io["rbytes"],
            "io_write_bytes": io["wbytes"],
            "io_read_ops": io["rios"],
            "io_write_ops": io["wios"],
        }
