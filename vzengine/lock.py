"""One operation at a time per VE: an flock on <root>/locks/<ctid>.lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import Busy


def flock_within(fd: int, wait: float, interval: float = 0.05) -> bool:
    """Take an exclusive flock on fd, trying for up to ``wait`` seconds; return whether it was taken."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)


@contextlib.contextmanager
def ve_lock(lockdir: Path, ctid: int, operation: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the VE's lock for ``operation``; wait up to ``wait`` seconds, then raise Busy."""
    path = lockdir / f"{ctid}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not flock_within(fd, wait):
            raise Busy(f"VE {ctid} is busy: {_holder(fd) or 'another operation'} is in progress; "
                       "try again when it ends")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{operation} (pid {os.getpid()})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
