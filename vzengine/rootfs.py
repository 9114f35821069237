"""Read and write files inside a VE's root from the host without following the VE's symlinks.

A VE's root user controls its files: a host-side write to ``/etc/shadow`` inside it must not
land on the host's own /etc/shadow through a planted symlink. Every path component is opened
with O_NOFOLLOW relative to the previous one, and files are replaced by rename in their
directory, so a symlink anywhere on the way is refused, never followed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import VZError


class UnsafePath(VZError):
    """A path inside the VE is a symlink or not a directory where one was expected."""


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


@contextlib.contextmanager
def _dir_fd(root: Path, parts: list[str], create: bool = False, uid: int = -1, gid: int = -1):
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


def read_file(root: Path, rel: str) -> bytes | None:
    """Return the file's bytes, or None if it does not exist."""
    dirs, name = _split(rel)
    try:
        with _dir_fd(root, dirs) as dfd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnsafePath(f"/{rel.strip('/')} in the VE is a symlink or unreadable") from e
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_file(root: Path, rel: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Replace /rel inside the VE atomically, owned by the host ids ``uid:gid``."""
    if isinstance(data, str):
        data = data.encode()
    dirs, name = _split(rel)
    with _dir_fd(root, dirs, create=True, uid=uid, gid=gid) as dfd:
        tmp = f".{name}.vz{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchown(f.fileno(), uid, gid)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
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


def file_owner(root: Path, rel: str) -> tuple[int, int, int] | None:
    """Return (uid, gid, mode) of /rel inside the VE without following symlinks, or None."""
    dirs, name = _split(rel)
    try:
        with _dir_fd(root, dirs) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid, st.st_mode & 0o7777
