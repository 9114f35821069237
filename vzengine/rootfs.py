"""Read and write files inside a VE's root from the host without following the VE's symlinks.

A VE's root user controls its files: a host-side write to ``/etc/shadow`` inside it must not
land on the host's own /etc/shadow through a planted symlink. Every path component is opened
with O_NOFOLLOW relative to the previous one (no "..", so the walk never leaves the root), and
files are replaced by rename in their directory, so a symlink anywhere on the way is refused,
never followed. Reads take regular files only, opened O_NONBLOCK and read up to a size cap:
a FIFO, a device node or an endless file planted by the VE fails at once instead of hanging
the agent (which holds the VE's lock meanwhile) or filling its memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import VZError

# The files the engine reads in a VE (hosts, shadow, machine-id, SSH keys) are far smaller.
MAX_READ = 4 << 20
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket",
          stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink"}


class UnsafePath(VZError):
    """A path inside the VE is a symlink or not a directory where one was expected."""


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


@contextlib.contextmanager
def _dir_fd(root: Path, parts: list[str], create: bool = False, uid: int = -1, gid: int = -1) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts:
            if name in ("", ".", ".."):
                raise UnsafePath(f"bad path component {name!r}")
            try:
                nfd = _open_dir(name, fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                if uid >= 0:
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                nfd = _open_dir(name, fd)
            except OSError as e:  # ELOOP: a symlink; ENOTDIR: a file
                raise UnsafePath(f"/{'/'.join(parts)} in the VE is not a plain directory") from e
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _split(rel: str) -> tuple[list[str], str]:
    parts = [p for p in rel.strip("/").split("/") if p]
    if not parts:
        raise UnsafePath("empty path")
    return parts[:-1], parts[-1]


def read_file(root: Path, rel: str, limit: int = MAX_READ) -> bytes | None:
    """Return the bytes of regular file /rel inside the VE (at most ``limit``), or None if it does not exist."""
    dirs, name = _split(rel)
    shown = "/" + "/".join([*dirs, name])
    try:
        with _dir_fd(root, dirs) as dfd:
            # Looked at before it is opened: opening a device can have effects of its own.
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{shown} in the VE is {_kind(st.st_mode)}, not a regular file: the host reads "
                                 "only regular files there; replace it with one")
            # O_NONBLOCK: should it become a FIFO meanwhile, the open does not wait for a writer.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except UnsafePath:
        raise
    except OSError as e:
        what = "a symlink" if e.errno == errno.ELOOP else f"unreadable ({e.strerror})"
        raise UnsafePath(f"{shown} in the VE is {what}: the host does not follow or read it") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # swapped between the look and the open
            raise UnsafePath(f"{shown} in the VE is {_kind(st.st_mode)}, not a regular file: the host reads "
                             "only regular files there; replace it with one")
        data = f.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            raise UnsafePath(f"{shown} in the VE is larger than {limit >> 20} MiB: the host reads no file that "
                             "large from a VE; shrink it")
        return data


def write_file(root: Path, rel: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Replace /rel inside the VE atomically, owned by the host ids ``uid:gid``."""
    if isinstance(data, str):
        data = data.encode()
    dirs, name = _split(rel)
    with _dir_fd(root, dirs, create=True, uid=uid, gid=gid) as dfd:
        tmp = f".{name}.vz{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            raise UnsafePath(f"/{'/'.join(dirs)} in the VE cannot take a new file ({e.strerror})") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchown(f.fileno(), uid, gid)
                # No set-id bits: a mode may be one the VE chose (the old file's, kept).
                os.fchmod(f.fileno(), mode & 0o1777)
            # A rename replaces the name: whatever the VE put there (a symlink, a FIFO, a hard
            # link to another of its files) is unlinked, never opened or written through.
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            if isinstance(e, OSError) and e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise UnsafePath(f"/{'/'.join([*dirs, name])} in the VE is a directory, not a file: "
                                 "remove it and try again") from None
            raise


def list_dir(root: Path, rel: str) -> list[str]:
    """Names in directory /rel inside the VE (no symlink followed on the way); [] if it is missing."""
    parts = [p for p in rel.strip("/").split("/") if p]
    try:
        with _dir_fd(root, parts) as dfd:
            return os.listdir(dfd)
    except FileNotFoundError:
        return []


def remove_file(root: Path, rel: str) -> None:
    dirs, name = _split(rel)
    try:
        with _dir_fd(root, dirs) as dfd:
            os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError) as e:
        raise UnsafePath(f"/{'/'.join([*dirs, name])} in the VE is not a file that can be removed "
                         f"({e.strerror})") from None


def file_owner(root: Path, rel: str) -> tuple[int, int, int] | None:
    """Return (uid, gid, mode) of /rel inside the VE without following symlinks, or None."""
    dirs, name = _split(rel)
    try:
        with _dir_fd(root, dirs) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid, st.st_mode & 0o7777
