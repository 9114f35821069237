"""Id-mapped mounts: show a tree stored at one id range as owned by another (open_tree + mount_setattr).

A VE's files stay on disk at the root's IDMAP_BASE (templates are shared, create is a snapshot);
the VE sees them through a mount whose user namespace maps IDMAP_BASE+k to its own range H+k.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
from pathlib import Path

from .errors import CommandFailed, Unsupported

# Syscall numbers: x86_64 and the generic table (aarch64, riscv64) share them for these calls.
_SYS = {"open_tree": 428, "move_mount": 429, "mount_setattr": 442}
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check_arch() -> None:
    if platform.machine() not in ("x86_64", "aarch64", "riscv64"):
        raise Unsupported(f"id-mapped VE roots are not wired up for {platform.machine()} (x86_64, aarch64 only)")


def _syscall(name: str, *args: object) -> int:
    ret = _libc.syscall(ctypes.c_long(_SYS[name]), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def userns_fd(outer: int, inner: int, size: int) -> int:
    """Open a new user namespace whose uid and gid maps send ``outer+k`` to ``inner+k`` (k < size).

    A short-lived child makes the namespace; this process, root in the initial one, writes its
    maps and keeps a descriptor to it, which is all an id-mapped mount needs.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, only raw calls, then _exit
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            if _libc.unshare(_CLONE_NEWUSER) == 0:
                os.write(ready_w, b"1")
                os.read(go_r, 1)  # wait until the parent has opened the namespace
                code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise CommandFailed("could not create a user namespace for an id-mapped mount")
        line = f"{outer} {inner} {size}\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(line)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)  # the child reads EOF and leaves
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def mount_idmapped(source: Path, target: Path, outer: int, inner: int, size: int) -> None:
    """Mount ``source`` at ``target`` (a private mount) with ids ``outer+k`` shown as ``inner+k``."""
    _check_arch()
    ns = userns_fd(outer, inner, size)
    tree = -1
    try:
        try:
            tree = _syscall("open_tree", _AT_FDCWD, os.fsencode(source),
                            ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC))
            attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, attr_clr=0, propagation=_MS_PRIVATE, userns_fd=ns)
            _syscall("mount_setattr", tree, b"", ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
                     ctypes.c_size_t(ctypes.sizeof(attr)))
            _syscall("move_mount", tree, b"", _AT_FDCWD, os.fsencode(target),
                     ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL) and "mount_setattr" in str(e):
                raise Unsupported(f"the file system of {source} cannot be id-mapped ({e.strerror}); "
                                  "VEs need btrfs or another file system with id-mapped mounts") from None
            raise CommandFailed(f"could not mount {source} id-mapped at {target}: {e.strerror}") from None
    finally:
        if tree >= 0:
            os.close(tree)
        os.close(ns)


def mount_points(under: Path) -> list[Path]:
    """Mount points of this mount namespace at or below ``under``, deepest first."""
    top = os.fsdecode(os.path.abspath(under)).rstrip("/")
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) < 5:
                continue
            mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if mnt == top or mnt.startswith(top + "/"):
                found.add(mnt)
    return [Path(m) for m in sorted(found, key=lambda m: -m.count("/"))]


def is_mountpoint(path: Path) -> bool:
    """Whether something is mounted at ``path``."""
    return Path(os.path.abspath(path)) in mount_points(path)


def unmount(path: Path) -> bool:
    """Detach whatever is mounted at ``path`` (all stacked mounts); return whether there was one."""
    done = False
    while is_mountpoint(path):
        if _libc.umount2(os.fsencode(path), _MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                break
            raise CommandFailed(f"could not unmount {path}: {os.strerror(err)}")
        done = True
    return done
