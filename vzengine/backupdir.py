"""The backup directory: backup file names, and opening, deleting and listing the files in it.

A backup named by the panel is opened by name in the backup directory and never through a link:
the directory must be root's alone, the name one the engine makes, the file a regular file.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from .engine import Engine

SUFFIX = ".tar.zst"
# What backup._write names its archives: ve-<CTID>-<YYYYMMDD>-<HHMMSS>[-<n>].tar.zst.
NAME_RE = re.compile(r"ve-[0-9]{1,10}-[0-9]{8}-[0-9]{6}(?:-[0-9]{1,6})?\.tar\.zst")


def backup_dir(eng: Engine, directory: str | os.PathLike | None = None) -> Path:
    return Path(directory).absolute() if directory else eng.layout.root / "backups"


def open_file(path: str | os.PathLike) -> BinaryIO:
    """Open a backup the caller names by path (root's own choice on the command line)."""
    path = Path(path).absolute()
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # checked before opening: opening a FIFO has effects
            raise InvalidInput(f"{path} is not a file")
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise NotFound(f"backup file {path} does not exist") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise InvalidInput(f"{path} is not a file")
    return f


def check_name(name: str) -> str:
    """Return ``name`` if it is a backup file name as the engine makes them; refuse anything else."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("give the file name of a backup (ve-<CTID>-<YYYYMMDD>-<HHMMSS>.tar.zst)")
    shown = repr(name if len(name) <= 80 else name[:80] + "…")
    if "\0" in name:
        raise InvalidInput(f"backup name {shown} contains a NUL byte")
    if name.startswith("/"):
        raise InvalidInput(f"backup name {shown} is an absolute path: give only the file name of a backup "
                           "in the backup directory")
    if "/" in name or name in (".", ".."):
        raise InvalidInput(f"backup name {shown} is a path ('/' or '..'): give only the file name of a backup "
                           "in the backup directory")
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(f"backup name {shown} is not the name of a backup "
                           "(ve-<CTID>-<YYYYMMDD>-<HHMMSS>.tar.zst)")
    return name


def _open_dir(directory: Path) -> int:
    """Open a backup directory that is no symbolic link and that only its owner, root, can write."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"backup directory {directory} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"backup directory {directory} is a symbolic link or not a directory "
                           f"({exc.strerror})") from None
    st = os.fstat(dfd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(dfd)
        raise InvalidInput(f"backup directory {directory} may be written by others (owner uid {st.st_uid}, "
                           f"mode {stat.S_IMODE(st.st_mode):o}): backups are read only from a directory "
                           "that only root writes")
    return dfd


def _lstat_named(dfd: int, directory: Path, name: str) -> os.stat_result:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFound(f"backup {name} does not exist in {directory}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(f"backup {name} in {directory} is a symbolic link: refused")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"backup {name} in {directory} is not a regular file: refused")
    return st


def open_named(directory: str | os.PathLike, name: str) -> BinaryIO:
    """Open backup ``name`` in ``directory`` without following links: a regular file, or refused."""
    check_name(name)
    directory = Path(directory).absolute()
    dfd = _open_dir(directory)
    try:
        before = _lstat_named(dfd, directory, name)  # so that a device or FIFO is never opened
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=dfd)
        except OSError as exc:
            raise InvalidInput(f"backup {name} in {directory} cannot be opened: {exc.strerror}") from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise InvalidInput(f"backup {name} in {directory} changed while it was opened: refused")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def delete_named(eng: Engine, name: str, directory: str | os.PathLike | None = None) -> None:
    """Delete backup ``name`` from the backup directory (a regular file of that name, nothing else)."""
    check_name(name)
    d = backup_dir(eng, directory)
    dfd = _open_dir(d)
    try:
        _lstat_named(dfd, d, name)
        # unlink never follows a link: had the name been swapped meanwhile, only the new name goes
        os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


def list_backups(eng: Engine, directory: str | os.PathLike | None = None, ctid: int | None = None) -> list[dict]:
    """Backups in a directory (by file name; ``verify`` checks one), newest first."""
    d = backup_dir(eng, directory)
    out = []
    pattern = f"ve-{ctid}-*{SUFFIX}" if ctid else f"ve-*{SUFFIX}"
    for p in d.glob(pattern) if d.is_dir() else []:
        st = p.stat()
        out.append({"path": str(p), "name": p.name, "size": st.st_size, "mtime": st.st_mtime})
    return sorted(out, key=lambda b: -b["mtime"])
