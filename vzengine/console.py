"""Console sessions: a pty with a shell (or login prompt) inside a VE, owned by the node agent.

A session outlives the browser tabs that watch it: it keeps a scrollback buffer so a viewer
who reconnects sees recent output, fans output out to any number of subscribers, and takes
input and window sizes from whoever holds it. It runs in asyncio, one reader per pty.

The pty master lives on the host; CRIU cannot checkpoint a VE while one is attached, so end
a VE's sessions before suspending it (``SessionRegistry.close_ve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
import tty
import uuid
from collections.abc import Callable

from .errors import InvalidInput

MAX_ROWS = 500
MAX_COLS = 1000
DEFAULT_SCROLLBACK = 256 * 1024

Subscriber = Callable[[bytes], None]


def check_size(rows, cols) -> tuple[int, int]:
    """Return a terminal size as ints, refusing absurd ones."""
    try:
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid terminal size {rows!r}x{cols!r}") from None
    if not (1 <= rows <= MAX_ROWS and 1 <= cols <= MAX_COLS):
        raise InvalidInput(f"terminal size {rows}x{cols} is out of range (1..{MAX_ROWS} rows, 1..{MAX_COLS} columns)")
    return rows, cols


def _set_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ConsoleSession:
    """One pty and the process on it; output goes to the scrollback and every subscriber."""

    def __init__(self, argv: list[str], ctid: int, rows: int = 24, cols: int = 80,
                 scrollback: int = DEFAULT_SCROLLBACK, env: dict | None = None):
        self.id = uuid.uuid4().hex
        self.ctid = ctid
        self.argv = argv
        self.rows, self.cols = check_size(rows, cols)
        self.limit = scrollback
        self.env = env
        self.buffer = bytearray()
        self.subscribers: set[Subscriber] = set()
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.returncode: int | None = None
        self.closed = asyncio.Event()
        self._proc: subprocess.Popen | None = None
        self._master = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            # lxc-attach makes the VE-side pty, which does the line discipline; ours stays raw
            tty.setraw(slave)
            self._winsize(slave)
            self._proc = subprocess.Popen(
                self.argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                start_new_session=True, preexec_fn=_set_controlling_tty, env=self.env,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        os.set_blocking(master, False)
        self._loop.add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the last process on the pty has gone
            data = b""
        if not data:
            self._finish()
            return
        self.last_activity = time.monotonic()
        self.buffer += data
        if len(self.buffer) > self.limit:
            del self.buffer[: len(self.buffer) - self.limit]
        for fn in list(self.subscribers):
            fn(data)

    def _finish(self) -> None:
        if self._master >= 0:
            self._loop.remove_reader(self._master)
            os.close(self._master)
            self._master = -1
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self._proc.wait(timeout=2)
            if self.returncode is None:
                self._kill()
        self.closed.set()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGHUP)
            try:
                self.returncode = self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self.returncode = self._proc.wait()

    async def close(self) -> None:
        """End the session: hang up the process group, release the pty."""
        if self.closed.is_set():
            return
        self._kill()
        self._finish()

    @property
    def alive(self) -> bool:
        return not self.closed.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # --- input ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.alive:
            return
        self.last_activity = time.monotonic()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    def resize(self, rows, cols) -> None:
        self.rows, self.cols = check_size(rows, cols)
        if self.alive:
            self._winsize(self._master)

    def _winsize(self, fd: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))

    # --- output -----------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> bytes:
        """Add a subscriber; return the scrollback it should show first."""
        self.subscribers.add(fn)
        return bytes(self.buffer)

    def unsubscribe(self, fn: Subscriber) -> None:
        self.subscribers.discard(fn)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity


class SessionRegistry:
    """The node agent's console sessions, one per (VE, mode) at most, ended when idle too long."""

    def __init__(self, idle_timeout: float = 3600.0):
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, ConsoleSession] = {}

    def find(self, ctid: int, key: str = "root") -> ConsoleSession | None:
        for s in self.sessions.values():
            if s.ctid == ctid and s.alive and getattr(s, "key", "root") == key:
                return s
        return None

    async def open(self, ctid: int, argv: list[str], key: str = "root", **kw) -> tuple[ConsoleSession, bool]:
        """Return (session, created): the VE's live session of this kind, or a new one."""
        existing = self.find(ctid, key)
        if existing:
            return existing, False
        session = ConsoleSession(argv, ctid, **kw)
        session.key = key
        await session.start()
        self.sessions[session.id] = session
        return session, True

    async def reap(self) -> list[ConsoleSession]:
        """Close sessions idle past the timeout and forget finished ones; return those ended."""
        ended = []
        for sid, s in list(self.sessions.items()):
            if s.alive and s.idle_for() > self.idle_timeout and not s.subscribers:
                await s.close()
            if not s.alive:
                ended.append(self.sessions.pop(sid))
        return ended

    async def close_ve(self, ctid: int) -> int:
        n = 0
        for sid, s in list(self.sessions.items()):
            if s.ctid == ctid:
                await s.close()
                self.sessions.pop(sid, None)
                n += 1
        return n

    async def close_all(self) -> None:
        for s in list(self.sessions.values()):
            await s.close()
        self.sessions.clear()
