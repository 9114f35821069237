"""The few btrfs quota ioctls the engine needs, made directly (no btrfs-progs subprocess).

Why ioctls: Debian 12's btrfs-progs 6.2 cannot switch simple quotas (squota, kernel 6.7+) on,
and reading every VE's usage through one quota-tree search takes about a millisecond for a
thousand VEs, against one sysfs file per VE (docs/storage-design.md measures both). Layouts
follow linux/btrfs.h and linux/btrfs_tree.h. The packing and parsing are pure functions, so
they are unit-tested without root or btrfs; the calls need CAP_SYS_ADMIN.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

_IOW, _IOR, _IOWR = 1, 2, 3


def ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """The request number the kernel's _IOC macro makes."""
    return (direction << 30) | (size << 16) | (typ << 8) | nr


IOC_TREE_SEARCH = ioc(_IOWR, 0x94, 17, 4096)
IOC_QUOTA_CTL = ioc(_IOWR, 0x94, 40, 16)
IOC_QGROUP_CREATE = ioc(_IOW, 0x94, 42, 16)
IOC_QGROUP_LIMIT = ioc(_IOR, 0x94, 43, 48)

QUOTA_CTL_ENABLE, QUOTA_CTL_DISABLE, QUOTA_CTL_ENABLE_SIMPLE = 1, 2, 4
QGROUP_LIMIT_MAX_RFER = 1
NO_LIMIT = (1 << 64) - 1  # max_rfer value that clears a limit (what "btrfs qgroup limit none" sends)

QUOTA_TREE = 8
QGROUP_INFO_KEY, QGROUP_LIMIT_KEY = 242, 244

_SEARCH_KEY = struct.Struct("=QQQQQQQIII4x32x")  # struct btrfs_ioctl_search_key: 104 bytes
_ITEM_HEADER = struct.Struct("=QQQII")  # transid, objectid, offset, type, len: 32 bytes
_SEARCH_BUF = 4096
_MAX_U64 = (1 << 64) - 1

SIMPLE_QUOTA_FEATURE = Path("/sys/fs/btrfs/features/simple_quota")


def simple_quota_supported() -> bool:
    """Whether the running kernel has btrfs simple quotas (6.7 and later)."""
    return SIMPLE_QUOTA_FEATURE.exists()


def _ioctl(path: Path, request: int, buf: bytearray) -> bytearray:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, buf)
        return buf
    finally:
        os.close(fd)


def quota_ctl(pool: Path, cmd: int) -> None:
    """BTRFS_IOC_QUOTA_CTL: turn full qgroups (1) or simple quotas (4) on, or quota off (2)."""
    _ioctl(pool, IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", cmd, 0)))


def limit_args(limit: int | None, qgroupid: int = 0) -> bytearray:
    """struct btrfs_ioctl_qgroup_limit_args for a referenced-bytes limit (None: no limit)."""
    if limit is not None and not 0 < limit < NO_LIMIT:
        raise ValueError(f"a qgroup limit must be a positive byte count, not {limit!r}")
    return bytearray(struct.pack("=QQQQQQ", qgroupid, QGROUP_LIMIT_MAX_RFER,
                                 NO_LIMIT if limit is None else limit, 0, 0, 0))


def qgroup_limit(subvol: Path, limit: int | None) -> None:
    """Limit the subvolume at ``subvol`` (its own level-0 qgroup) to ``limit`` referenced bytes.

    Under simple quotas referenced and exclusive are the same number, so one limit serves both.
    """
    _ioctl(subvol, IOC_QGROUP_LIMIT, limit_args(limit))


def qgroup_destroy(pool: Path, qgroupid: int) -> None:
    """BTRFS_IOC_QGROUP_CREATE with create=0. EBUSY while the qgroup still counts bytes."""
    _ioctl(pool, IOC_QGROUP_CREATE, bytearray(struct.pack("=QQ", 0, qgroupid)))


def search_key(tree: int, min_key: tuple[int, int, int], max_key: tuple[int, int, int]) -> bytearray:
    """A 4096-byte BTRFS_IOC_TREE_SEARCH argument for keys from ``min_key`` to ``max_key``.

    Keys are (objectid, type, offset) and compare in that order, as the kernel compares them.
    """
    buf = bytearray(_SEARCH_BUF)
    _SEARCH_KEY.pack_into(buf, 0, tree, min_key[0], max_key[0], min_key[2], max_key[2], 0, _MAX_U64,
                          min_key[1], max_key[1], _SEARCH_BUF)
    return buf


def parse_search(buf: bytes | bytearray) -> list[tuple[tuple[int, int, int], bytes]]:
    """The items a TREE_SEARCH filled into ``buf``: [((objectid, type, offset), item data)]."""
    nr = struct.unpack_from("=I", buf, 64)[0]
    pos, items = _SEARCH_KEY.size, []
    for _ in range(nr):
        _, objectid, offset, typ, length = _ITEM_HEADER.unpack_from(buf, pos)
        pos += _ITEM_HEADER.size
        if pos + length > len(buf):
            raise ValueError("a tree-search item runs past the end of the buffer")
        items.append(((objectid, typ, offset), bytes(buf[pos:pos + length])))
        pos += length
    return items


def next_key(key: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The smallest key after ``key``, None past the last one (where a search goes on)."""
    objectid, typ, offset = key
    if offset < _MAX_U64:
        return objectid, typ, offset + 1
    if typ < 255:
        return objectid, typ + 1, 0
    return (objectid + 1, 0, 0) if objectid < _MAX_U64 else None


def qgroups_from_items(items: list[tuple[tuple[int, int, int], bytes]]) -> dict[int, tuple[int, int | None]]:
    """{subvolume id: (referenced bytes, referenced limit or None)} of the level-0 qgroups.

    QGROUP_INFO items hold (generation, rfer, rfer_cmpr, excl, excl_cmpr); QGROUP_LIMIT items
    hold (flags, max_rfer, max_excl, rsv_rfer, rsv_excl). The key's offset is the qgroupid,
    level in its top 16 bits; a level-0 qgroup's id is its subvolume's id.
    """
    used: dict[int, int] = {}
    limits: dict[int, int] = {}
    for (_, typ, qgroupid), data in items:
        if qgroupid >> 48:
            continue
        if typ == QGROUP_INFO_KEY and len(data) >= 16:
            used[qgroupid] = struct.unpack_from("=Q", data, 8)[0]
        elif typ == QGROUP_LIMIT_KEY and len(data) >= 16:
            flags, max_rfer = struct.unpack_from("=QQ", data, 0)
            if flags & QGROUP_LIMIT_MAX_RFER and max_rfer:
                limits[qgroupid] = max_rfer
    return {sid: (n, limits.get(sid)) for sid, n in used.items()}


def qgroup_usage_all(pool: Path) -> dict[int, tuple[int, int | None]]:
    """{subvolume id: (referenced bytes, limit or None)} of every level-0 qgroup of the pool.

    One BTRFS_IOC_TREE_SEARCH over the quota tree's QGROUP_INFO and QGROUP_LIMIT items per
    few dozen qgroups: what ``btrfs qgroup show`` reads, without the subprocess. Raises
    OSError (ENOENT when quota is off, EPERM without CAP_SYS_ADMIN).
    """
    items: list[tuple[tuple[int, int, int], bytes]] = []
    lo: tuple[int, int, int] | None = (0, QGROUP_INFO_KEY, 0)
    hi = (0, QGROUP_LIMIT_KEY, _MAX_U64)
    fd = os.open(pool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while lo is not None and lo <= hi:
            buf = search_key(QUOTA_TREE, lo, hi)
            fcntl.ioctl(fd, IOC_TREE_SEARCH, buf)
            got = parse_search(buf)
            if not got:
                break
            items += got
            lo = next_key(got[-1][0])
    finally:
        os.close(fd)
    return qgroups_from_items(items)
