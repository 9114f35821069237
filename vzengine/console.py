"""Console sessions: a pty with a shell (or login prompt) inside a VE, owned by the node agent.

A session outlives the browser tabs that watch it: it keeps a scrollback buffer so a viewer
who reconnects sees recent output, fans output out to any number of subscribers, and takes
input and window sizes from whoever holds it. It runs in asyncio, one reader per pty, and
never blocks the event loop: input the pty cannot take at once waits in a bounded queue, and
the process is reaped off the loop.

Output is numbered: ``total`` counts every byte the pty has produced, and the scrollback
holds the bytes ``[total - len(buffer), total)``, so a viewer can say where it is
(``since(offset)``) and a slow one can be held back without holding back the others.

The pty master lives on the host; CRIU cannot checkpoint a VE while one is attached, so end
a VE's sessions before suspending it (``SessionRegistry.close_ve``).

A session opened while its VE is still booting (``BootWatch``) first shows "VE N is booting…"
and the VE's console log as it grows (systemd VEs have one: ``Layout.console_log``), polls the
template's boot check, and starts its shell in the same output stream once the VE has booted.
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
import threading
import time
import tty
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput

if TYPE_CHECKING:
    from .engine import Engine

MAX_ROWS = 500
MAX_COLS = 1000
DEFAULT_SCROLLBACK = 256 * 1024
MAX_PENDING_INPUT = 1024 * 1024  # input waiting for the pty beyond this is refused
MODES = ("root", "login")

BOOT_POLL = 0.25  # seconds between boot checks while a session waits for its VE to boot
BOOT_TIMEOUT = 600.0  # a VE that has not booted by then gets its shell anyway

Subscriber = Callable[[bytes], None]


def run_id(engine: Engine, ctid: int) -> int | None:
    """A number that changes with every start of the VE (its cgroup's inode), None when it is not running.

    Costs one stat(): the daemon remembers which runs have booted and asks the VE only about new ones.
    """
    from . import cgroups

    rel = engine.layout.cgroup_dir(ctid)
    for controller in ("pids", "memory"):
        path = cgroups.path(controller, rel)
        if path is not None:
            try:
                return os.stat(path).st_ino
            except OSError:
                return None
    return None


def boot_state(engine: Engine, ctid: int, check: str | None = None) -> str:
    """"booted", "booting" or "stopped": one run of the template's boot check inside the VE."""
    if not engine.is_running(ctid):
        return "stopped"
    if check is None:
        check = engine._spec(engine.config(ctid)).boot_check
    try:
        proc = engine.lxc.attach(ctid, ["/bin/sh", "-c", check], timeout=10)
    except Exception:  # lxc-attach cannot get in yet (init is starting), or it hung
        return "booting" if engine.is_running(ctid) else "stopped"
    if proc.returncode == 0:
        return "booted"
    return "booting" if engine.is_running(ctid) else "stopped"


@dataclass
class BootWatch:
    """What a session shows before its shell: the VE's boot, followed until the boot check passes.

    booting False means the VE has booted already and only its console log is shown (when the
    page asked for the boot messages of a VE it has just started).
    """

    ctid: int
    state: Callable[[], str]  # blocking: boot_state() of the VE
    log: Path | None = None  # the VE's console log, if it has one
    booting: bool = True
    poll: float = BOOT_POLL
    timeout: float = BOOT_TIMEOUT

    @classmethod
    def for_ve(cls, engine: Engine, ctid: int, show_log: bool = False, known_booted: bool = False) -> BootWatch | None:
        """A BootWatch if VE ctid is still booting (or show_log and it has a console log), else None.

        Blocking (one lxc-attach unless known_booted): call it off the event loop.
        """
        conf = engine.config(ctid)
        check = engine._spec(conf).boot_check
        console_log = engine.layout.console_log(conf.ctid)
        log = console_log if console_log.is_file() else None
        state = "booted" if known_booted else boot_state(engine, conf.ctid, check)
        if state == "booted" and not (show_log and log is not None):
            return None
        return cls(ctid=conf.ctid, state=lambda: boot_state(engine, conf.ctid, check), log=log,
                   booting=state != "booted")


def check_size(rows: Any, cols: Any) -> tuple[int, int]:
    """Return a terminal size as ints, refusing absurd ones (and anything a client sent that is no number)."""
    try:
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid terminal size {rows!r}x{cols!r}") from None
    if not (1 <= rows <= MAX_ROWS and 1 <= cols <= MAX_COLS):
        raise InvalidInput(f"terminal size {rows}x{cols} is out of range (1..{MAX_ROWS} rows, 1..{MAX_COLS} columns)")
    return rows, cols


def session_argv(engine: Engine, ctid: int, mode: str = "root", term: str | None = None) -> list[str]:
    """Return the command line of a console in VE ctid: a root shell, or the VE's own login prompt."""
    if mode not in MODES:
        raise InvalidInput(f"unknown console mode {mode!r} (root or login)")
    argv = engine.enter_argv(ctid, term)
    if mode == "login":
        # login(1) from the VE's PATH asks for a user and password and starts that user's shell. It must
        # own its terminal, and the one lxc-attach gives belongs to the host's root (unmapped in the VE):
        # where script(1) exists (Debian), it makes a terminal inside the VE first. Busybox login copes.
        argv = [*argv, "--", "/bin/sh", "-c",
                "command -v script >/dev/null 2>&1 && exec script -qfc login /dev/null; exec login"]
    return argv


def _set_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # When the session ends, our pty master closes and the kernel hangs up lxc-attach. Killed by that
    # SIGHUP, it would leave its shell in the VE unreaped: a zombie whose parent is the host's init,
    # which keeps a systemd VE from stopping cleanly until the stop timeout. Ignoring it, lxc-attach
    # sees the hang-up on its terminal, hangs up the shell's, reaps the shell and exits.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class ConsoleSession:
    """One pty and the process on it; output goes to the scrollback and every subscriber."""

    def __init__(self, argv: list[str], ctid: int, rows: int = 24, cols: int = 80,
                 scrollback: int = DEFAULT_SCROLLBACK, env: dict[str, str] | None = None, boot: BootWatch | None = None):
        self.id = uuid.uuid4().hex
        self.ctid = ctid
        self.argv = argv
        self.key = "root"
        self.rows, self.cols = check_size(rows, cols)
        self.limit = scrollback
        self.env = env
        self.buffer = bytearray()
        self.total = 0  # bytes produced so far; the buffer ends at this offset
        self.subscribers: set[Subscriber] = set()
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.last_input = time.monotonic()
        self.returncode: int | None = None
        self.closed = asyncio.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = bytearray()  # input the pty has not taken yet
        self._reading = False
        self.boot = boot
        self.booting = False  # showing the boot; no process yet
        self.booted = asyncio.Event()  # set when the shell has been started (at once without a boot)
        self.boot_result = ""  # "booted", "stopped", "timeout" or "closed" after a boot phase
        self._boot_task: asyncio.Task[None] | None = None
        self._boot_paused = False

    @property
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop start() ran on; the pty exists only after start(), so everything that uses it has one."""
        assert self._loop is not None, "the session has not been started"
        return self._loop

    # --- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.boot is not None:
            self.booting = True
            self._boot_task = asyncio.create_task(self._boot_phase(), name=f"console-boot-{self.ctid}")
            return
        self._spawn()

    def _spawn(self) -> None:
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
        self.booted.set()
        self.resume_reading()

    # --- the boot, before the shell -----------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        """Number output, keep it in the scrollback and pass it on (the pty's, or the boot phase's)."""
        if not data:
            return
        self.last_activity = time.monotonic()
        self.total += len(data)
        self.buffer += data
        if len(self.buffer) > self.limit:
            del self.buffer[: len(self.buffer) - self.limit]
        for fn in list(self.subscribers):
            fn(data)

    def _follow_log(self, pos: int, limit: int | None = 64 * 1024) -> int:
        """Emit what the console log has beyond pos (LXC truncates it when full); return the new pos."""
        assert self.boot is not None and self.boot.log is not None, "only called while a boot log is shown"
        log = self.boot.log
        try:
            with open(log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < pos:
                    pos = 0
                f.seek(pos)
                data = f.read(limit if limit is not None else -1)
        except OSError:
            return pos
        # The log is the raw stream of the VE's /dev/console: lines end in CR CR LF, as on a terminal.
        self._emit(data)
        return pos + len(data)

    async def _boot_phase(self) -> None:
        boot = self.boot
        assert boot is not None, "start() runs the boot phase only for a session with a BootWatch"
        say = "is booting\u2026" if boot.booting else "has booted; its boot messages:"
        self._emit(f"\x1b[33mVE {self.ctid} {say}\x1b[0m\r\n".encode())
        pos = 0
        state = "booting" if boot.booting else "booted"
        deadline = time.monotonic() + boot.timeout
        try:
            while True:
                if boot.log is not None and not self._boot_paused:
                    pos = self._follow_log(pos)
                if state != "booting":
                    break
                state = await asyncio.to_thread(boot.state)
                if state == "booting":
                    if time.monotonic() > deadline:
                        state = "timeout"
                    else:
                        await asyncio.sleep(boot.poll)
            if boot.log is not None:
                self._follow_log(pos, None)
        except asyncio.CancelledError:
            self.boot_result = "closed"
            raise
        self.boot_result = state
        self.booting = False
        if state == "stopped":
            self._emit(f"\r\n\x1b[33mVE {self.ctid} stopped while booting.\x1b[0m\r\n".encode())
            self.closed.set()
            return
        if boot.booting:
            done = "has booted" if state == "booted" else f"has not booted within {boot.timeout:g} s"
            self._emit(f"\r\n\x1b[33mVE {self.ctid} {done}.\x1b[0m\r\n".encode())
        try:
            self._spawn()
        except OSError as exc:
            self._emit(f"\r\nThe shell could not be started: {exc.strerror or exc}\r\n".encode())
            self.closed.set()

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
        self._emit(data)

    def pause_reading(self) -> None:
        """Stop reading the pty: the process in the VE blocks on output, as on a real terminal (^S)."""
        self._boot_paused = True
        if self._reading and self._master >= 0:
            self._running_loop.remove_reader(self._master)
        self._reading = False

    def resume_reading(self) -> None:
        self._boot_paused = False
        if not self._reading and self._master >= 0:
            self._running_loop.add_reader(self._master, self._on_readable)
            self._reading = True

    @property
    def paused(self) -> bool:
        if self.booting:
            return self._boot_paused
        return self.alive and not self._reading

    def _finish(self) -> None:
        """Release the pty; reap the process off the loop, then mark the session closed."""
        if self._master >= 0:
            self.pause_reading()
            with contextlib.suppress(ValueError, RuntimeError):
                self._running_loop.remove_writer(self._master)
            os.close(self._master)
            self._master = -1
            self._pending.clear()
            threading.Thread(target=self._reap, name=f"console-reap-{self.ctid}", daemon=True).start()

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self.returncode = self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGTERM)
                try:
                    self.returncode = self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.returncode = self._proc.wait()
        with contextlib.suppress(RuntimeError):  # the loop has gone: nobody waits for us
            self._running_loop.call_soon_threadsafe(self.closed.set)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def close(self) -> None:
        """End the session: hang up the pty (the process sees its terminal go), wait for the process."""
        if self.closed.is_set():
            return
        if self._boot_task is not None and not self._boot_task.done():
            self._boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._boot_task
            self.booting = False
            if self._master < 0:
                self.closed.set()
                return
        self._finish()
        await self.closed.wait()

    @property
    def alive(self) -> bool:
        return (self._master >= 0 or self.booting) and not self.closed.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # --- input ------------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Send data to the process; return False (and drop it) if too much input is waiting already."""
        if not self.alive or self.booting:
            return False  # (while the VE boots there is nothing to type into yet)
        if len(self._pending) + len(data) > MAX_PENDING_INPUT:
            return False
        self.last_activity = self.last_input = time.monotonic()
        was_waiting = bool(self._pending)
        self._pending += data
        if not was_waiting:
            self._drain()
        return True

    def _drain(self) -> None:
        if self._master < 0:
            return
        try:
            while self._pending:
                n = os.write(self._master, self._pending)
                del self._pending[:n]
        except BlockingIOError:
            pass
        except OSError:  # the pty is going away; the reader sees EIO and ends the session
            self._pending.clear()
        if self._pending:
            self._running_loop.add_writer(self._master, self._drain)
        else:
            with contextlib.suppress(ValueError, RuntimeError):
                self._running_loop.remove_writer(self._master)

    def resize(self, rows: Any, cols: Any) -> None:
        self.rows, self.cols = check_size(rows, cols)
        if self._master >= 0 and not self.closed.is_set():
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

    @property
    def start_offset(self) -> int:
        """Offset of the oldest byte still in the scrollback."""
        return self.total - len(self.buffer)

    def since(self, offset: int, limit: int | None = None) -> tuple[int, bytes]:
        """Return (from, data): output from offset on, or from the oldest byte kept if offset is older."""
        start = max(offset, self.start_offset)
        begin = start - self.start_offset
        end = len(self.buffer) if limit is None else min(len(self.buffer), begin + limit)
        return start, bytes(self.buffer[begin:end])

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity

    def input_idle_for(self) -> float:
        """Seconds since anyone typed (or since the session began)."""
        return time.monotonic() - self.last_input


class SessionRegistry:
    """The node agent's console sessions, one per (VE, mode) at most, ended when idle too long."""

    def __init__(self, idle_timeout: float = 3600.0) -> None:
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, ConsoleSession] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    def find(self, ctid: int, key: str = "root") -> ConsoleSession | None:
        for s in self.sessions.values():
            if s.ctid == ctid and s.alive and s.key == key:
                return s
        return None

    async def open(self, ctid: int, argv: list[str] | Callable[[], list[str]], key: str = "root",
                   boot: Callable[[], BootWatch | None] | None = None, **kw: Any) -> tuple[ConsoleSession, bool]:
        """Return (session, created): the VE's live session of this kind, or a new one.

        argv may be a callable, called (in a thread: it may ask the engine) only when a new
        session is needed; concurrent opens of the same (VE, kind) make one session. boot, if
        given, is called in that thread after argv: the BootWatch the new session shows first.
        """
        lock = self._locks.setdefault((ctid, key), asyncio.Lock())
        async with lock:
            existing = self.find(ctid, key)
            if existing:
                return existing, False
            def prepare() -> tuple[list[str], BootWatch | None]:
                return (argv() if callable(argv) else argv), (boot() if boot is not None else None)

            argv_, watch = await asyncio.to_thread(prepare) if callable(argv) or boot else (argv, None)
            session = ConsoleSession(argv_, ctid, boot=watch, **kw)
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
        await asyncio.gather(*(s.close() for s in self.sessions.values()))
        self.sessions.clear()
