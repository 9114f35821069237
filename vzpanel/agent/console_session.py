"""One console session with its viewers: who watches, who writes, and one sender task per session that sends
each viewer everything in order, within its acknowledgement window (the daemon in console.py owns these)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vzengine.console import ConsoleSession
from vzpanel.console import protocol as p

if TYPE_CHECKING:
    from .console import ConsoleDaemon

log = logging.getLogger("vzpanel.console")


@dataclass(eq=False)
class Viewer:
    """One websocket watching a session, as the daemon knows it."""

    channel: str
    user_id: int | None
    username: str
    role: str = p.VIEWER
    offset: int = 0  # next output byte to send it
    acked: int = 0  # output its browser has shown
    ready: bool = False  # opened has been sent: output may follow
    last_seen: float = field(default_factory=time.monotonic)
    warned_read_only: bool = False
    warned_booting: bool = False


class LiveSession:
    """A ConsoleSession with its viewers, and one sender task that sends them everything in order."""

    def __init__(self, daemon: ConsoleDaemon, session: ConsoleSession, mode: str):
        self.daemon = daemon
        self.session = session
        self.mode = mode
        self.viewers: dict[str, Viewer] = {}
        self.writer: Viewer | None = None
        self.detached_at = time.monotonic()
        self.outbox: collections.deque = collections.deque()
        self.wake = asyncio.Event()
        self.end_reason: str | None = None
        self.end_by = ""
        self.dropped_input = 0
        session.subscribe(self._on_output)
        self.task = asyncio.create_task(self._run(), name=f"console-{session.id[:8]}")

    @property
    def id(self) -> str:
        return self.session.id

    def _on_output(self, data: bytes) -> None:
        self.wake.set()
        if self._must_hold():
            self.session.pause_reading()

    def _must_hold(self) -> bool:
        """Whether to stop reading the pty, so that the program in the VE waits as on a real terminal.

        Hold while every viewer has a full window (its browser has not shown what it got), or while a
        viewer whose browser keeps up has not been sent half a scrollback yet (it must never fall out
        of it). A viewer with a full window holds nobody up: if it stays behind, it skips.
        """
        ready = [v for v in self.viewers.values() if v.ready]
        if not ready:
            return False  # nobody watching: keep reading into the scrollback
        keeping_up = [v for v in ready if v.offset - v.acked < p.ACK_WINDOW]
        if not keeping_up:
            return True
        return any(self.session.total - v.offset > self.session.limit // 2 for v in keeping_up)

    # --- viewers -------------------------------------------------------------------------
    def add(self, viewer: Viewer, asked: str, size: tuple[int, int], created: bool) -> None:
        """Attach viewer with the role it may have; queue opened, then the scrollback follows as output."""
        old = self.viewers.get(viewer.channel)
        if old is not None:
            self.remove(old)
        current = self.writer
        changed = False
        if asked == "write" and (current is None or current.user_id == viewer.user_id):
            if current is not None:  # the same user's other tab (or the socket before a reconnect)
                current.role = p.VIEWER
                changed = True
            viewer.role = p.WRITER
            self.writer = viewer
            if not created and size != (self.session.rows, self.session.cols):
                self.session.resize(*size)
                self.broadcast_size()
        if changed:
            self.broadcast_roles("takeover", viewer.username)
        viewer.offset = viewer.acked = self.session.start_offset
        self.viewers[viewer.channel] = viewer
        s = self.session
        self.to(viewer, "console.opened", role=viewer.role, mode=self.mode, rows=s.rows, cols=s.cols,
                created=created, offset=viewer.offset, writer=self.writer.username if self.writer else None,
                viewers=len(self.viewers), booting=s.booting, on_sent=lambda: setattr(viewer, "ready", True))

    def remove(self, viewer: Viewer) -> None:
        self.viewers.pop(viewer.channel, None)
        if self.writer is viewer:
            self.writer = None
            self.broadcast_roles("left", viewer.username)
        if not self.viewers:
            self.detached_at = time.monotonic()
        self.wake.set()  # a blocked viewer leaving may let the pty flow again

    def take_over(self, viewer: Viewer) -> None:
        previous = self.writer
        if previous is viewer:
            return
        if previous is not None:
            previous.role = p.VIEWER
        viewer.role = p.WRITER
        viewer.warned_read_only = False
        self.writer = viewer
        self.broadcast_roles("takeover", viewer.username)

    def release(self, viewer: Viewer) -> None:
        if self.writer is viewer:
            viewer.role = p.VIEWER
            self.writer = None
            self.broadcast_roles("release", viewer.username)

    def broadcast_roles(self, reason: str, by: str) -> None:
        writer = self.writer.username if self.writer else None
        for v in self.viewers.values():
            self.to(v, "console.role", role=v.role, writer=writer, reason=reason, by=by)

    def broadcast_size(self, except_: Viewer | None = None) -> None:
        for v in self.viewers.values():
            if v is not except_:
                self.to(v, "console.resized", rows=self.session.rows, cols=self.session.cols)

    # --- sending -------------------------------------------------------------------------
    def to(self, viewer: Viewer, type_: str, on_sent=None, **fields) -> None:
        """Queue a control message for viewer, in order with everything else of this session."""
        self.outbox.append((viewer, {"type": type_, "sid": self.id, **fields}, on_sent))
        self.wake.set()

    def _booted(self) -> None:
        """The boot phase is over and the shell runs: tell the viewers, remember the run has booted."""
        if self.session.boot_result not in ("booted", "timeout") or not self.session.alive:
            return
        self.daemon.remember_booted(self.session.ctid)
        for v in self.viewers.values():
            self.to(v, "console.booted", result=self.session.boot_result)

    async def _run(self) -> None:
        ended = asyncio.create_task(self.session.closed.wait())
        ended.add_done_callback(lambda _: self._ending("exit"))
        booted = None
        if self.session.boot is not None:  # had a boot phase, perhaps over already (a replayed log is quick):
            # the viewers were told "booting" when they joined, so they must hear "booted" either way
            booted = asyncio.create_task(self.session.booted.wait())
            booted.add_done_callback(lambda t: None if t.cancelled() else self._booted())
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                await self._send_outbox()
                await self._flush(final=self.end_reason is not None)
                if self.end_reason is not None and self.session.closed.is_set():
                    break
            await self._send_outbox()
            await self._flush(final=True)
            await self._send_exited()
        except Exception:
            log.exception("console session %s: sender failed", self.id)
            await self.session.close()
        finally:
            ended.cancel()
            if booted is not None:
                booted.cancel()
            self.daemon.forget(self)

    async def _send_outbox(self) -> None:
        while self.outbox:
            viewer, message, on_sent = self.outbox.popleft()
            if viewer.channel not in self.viewers:
                continue
            if await self.daemon.send(viewer.channel, message):
                if on_sent:
                    on_sent()
            else:
                self.remove(viewer)

    async def _flush(self, final: bool = False) -> None:
        """Send each ready viewer the output it has not had, within its window; pause the pty if all lag."""
        s = self.session
        for viewer in list(self.viewers.values()):
            while viewer.ready and viewer.offset < s.total and viewer.channel in self.viewers:
                if not final and viewer.offset - viewer.acked >= p.ACK_WINDOW:
                    break
                start, data = s.since(viewer.offset, p.CHUNK)
                if start > viewer.offset:
                    lost = start - viewer.offset
                    viewer.acked = max(viewer.acked, start)
                    if not await self.daemon.send(viewer.channel, {"type": "console.skipped", "sid": self.id,
                                                                   "offset": start, "lost": lost}):
                        self.remove(viewer)
                        break
                viewer.offset = start + len(data)
                if not await self.daemon.send(viewer.channel, {"type": "console.output", "sid": self.id,
                                                               "data": data}):
                    self.remove(viewer)
                    break
        if not final and self._must_hold():
            s.pause_reading()
        else:
            s.resume_reading()

    async def _send_exited(self) -> None:
        reason = self.end_reason or "exit"
        message = await self.daemon.exit_message(self, reason)
        for viewer in list(self.viewers.values()):
            await self.daemon.send(viewer.channel, {"type": "console.exited", "sid": self.id, "reason": reason,
                                                    "message": message, "code": self.session.returncode})

    # --- ending --------------------------------------------------------------------------
    def _ending(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.wake.set()

    async def end(self, reason: str, by: str = "") -> None:
        """Close the session for reason; viewers get output up to the end, then exited."""
        if self.end_reason is None:
            self.end_reason, self.end_by = reason, by
        await self.session.close()
        self.wake.set()
