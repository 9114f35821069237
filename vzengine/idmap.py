"""Shift a tree's owners into a VE's id range (uid 0 inside = IDMAP_BASE outside)."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

_CAP_XATTR = "security.capability"
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xFF000000


def _v3_caps(blob: bytes, rootid: int) -> bytes:
    """Turn file capabilities into v3 ones owned by ``rootid``, so they work inside the VE."""
    magic = struct.unpack_from("<I", blob)[0]
    flags = magic & ~_VFS_CAP_REVISION_MASK
    data = blob[4:20]
    return struct.pack("<I", _VFS_CAP_REVISION_3 | flags) + data + struct.pack("<I", rootid)


def shift_tree(top: Path, base: int, size: int = 65536) -> int:
    """Add ``base`` to every owner below ``top`` that is still in 0..size-1; return files changed.

    chown clears set-id bits and file capabilities, so both are put back afterwards.
    """
    changed = 0

    def shift(path: str, st: os.stat_result) -> None:
        nonlocal changed
        uid = st.st_uid + base if st.st_uid < size else st.st_uid
        gid = st.st_gid + base if st.st_gid < size else st.st_gid
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        caps = None
        if stat.S_ISREG(st.st_mode):
            try:
                caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
            except OSError:
                caps = None
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps and len(caps) >= 20:
            os.setxattr(path, _CAP_XATTR, _v3_caps(caps, base), follow_symlinks=False)
        changed += 1

    shift(str(top), os.lstat(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            shift(p, os.lstat(p))
    return changed
