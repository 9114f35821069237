"""The console daemon: console sessions of one node, reached through the channel layer.

It is the node agent's other door (``manage.py consoled``, root), because attaching to a VE needs
root; the web process only relays. It listens on ``console.<node>`` (vzpanel/console/protocol.py
has the messages, which it checks again), keeps a ``SessionRegistry`` of ptys, and knows every
viewer of every session with its role: input from anyone but the session's one writer is
dropped here, whatever the browser claims.

It needs no database: who may open which VE was decided by the consumer that relays the
request, and the audit entries are written there too.

A new session for a VE that is still booting shows the boot first (``vzengine.console.BootWatch``):
"VE N is booting…", the VE's console log as it grows (systemd VEs), then the shell once the
template's boot check passes; viewers get ``console.booted`` then. Which runs of a VE have booted
is remembered (by ``run_id``, one stat), so only the first console of each run asks the VE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

from channels.exceptions import ChannelFull

from vzengine.console import BootWatch, ConsoleSession, SessionRegistry, check_size, run_id, session_argv
from vzpanel.console import protocol as p

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


class ConsoleDaemon:
    """Serve console sessions of this node's VEs on the channel console.<node>."""

    def __init__(self, layer, engine, node: str, *, linger: float = 600, idle_timeout: float = 3600,
                 scrollback: int = 256 * 1024, term: str = "xterm-256color"):
        self.layer = layer
        self.engine = engine
        self.node = node
        self.channel = p.daemon_channel(node)
        self.linger = linger
        self.idle_timeout = idle_timeout
        self.scrollback = scrollback
        self.term = term
        self.registry = SessionRegistry(idle_timeout=idle_timeout)
        self.live: dict[str, LiveSession] = {}
        self.booted_runs: dict[int, int] = {}  # ctid → the run_id seen booted
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.handlers = {
            "console.open": self.on_open,
            "console.input": self.on_input,
            "console.resize": self.on_resize,
            "console.ack": self.on_ack,
            "console.takeover": self.on_takeover,
            "console.release": self.on_release,
            "console.close": self.on_close,
            "console.keepalive": self.on_keepalive,
            "console.detach": self.on_detach,
            "console.ping": self.on_ping,
            "console.close_ve": self.on_close_ve,
        }

    # --- running -------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until stop() (or SIGTERM/SIGINT), then end every session."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        reaper = asyncio.create_task(self._reap_forever())
        receiver = asyncio.create_task(self._receive_forever())
        log.warning("console daemon of node %s listening on %s (linger %ss, idle timeout %ss)",
                    self.node, self.channel, self.linger, self.idle_timeout)
        await self.stopping.wait()
        receiver.cancel()
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        await self.close_all("shutdown")

    def stop(self) -> None:
        self.stopping.set()

    async def _receive_forever(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("console daemon: receiving from the channel layer failed; retrying")
                await asyncio.sleep(1)
                continue
            try:
                self.dispatch(message)
            except Exception:
                log.exception("console daemon: could not handle %r", message.get("type"))

    def dispatch(self, message: dict) -> None:
        handler = self.handlers.get(message.get("type"))
        if handler is None:
            log.warning("console daemon: unknown message %r", message.get("type"))
            return
        result = handler(message)
        if asyncio.iscoroutine(result):
            self.spawn(result)

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("console daemon: %s failed", task.get_coro().__qualname__, exc_info=task.exception())

    async def send(self, channel: str, message: dict) -> bool:
        """Send message; return False if the receiver cannot take it (gone, or far behind)."""
        try:
            await self.layer.send(channel, message)
            return True
        except ChannelFull:
            log.warning("console daemon: channel %s is full; dropping that viewer", channel)
        except Exception:
            log.exception("console daemon: sending to %s failed", channel)
        return False

    def reply(self, channel: str | None, type_: str, **fields) -> None:
        if channel:
            self.spawn(self.send(channel, {"type": type_, **fields}))

    def error(self, channel, code: str, message: str, sid: str | None = None) -> None:
        self.reply(channel, "console.error", code=code, message=message, sid=sid)

    def remember_booted(self, ctid: int) -> None:
        run = run_id(self.engine, ctid)
        if run is not None:
            self.booted_runs[ctid] = run

    def boot_watch(self, ctid: int, show_log: bool) -> BootWatch | None:
        """Blocking (a thread): the boot a new session of VE ctid shows first, or None if it has booted."""
        run = run_id(self.engine, ctid)
        known = run is not None and self.booted_runs.get(ctid) == run
        watch = BootWatch.for_ve(self.engine, ctid, show_log=show_log, known_booted=known)
        if run is not None and (watch is None or not watch.booting):
            self.booted_runs[ctid] = run
        return watch

    def forget(self, live: LiveSession) -> None:
        self.live.pop(live.id, None)
        self.registry.sessions.pop(live.id, None)

    def find(self, message: dict) -> tuple[LiveSession | None, Viewer | None]:
        """Return the session and the sender's viewer entry, answering an error if either is missing."""
        channel = message.get("reply")
        live = self.live.get(message.get("sid") or "")
        if live is None or live.end_reason is not None:
            self.error(channel, p.NO_SESSION, "This console session has ended. Reconnect to start a new one.",
                       sid=message.get("sid"))
            return None, None
        viewer = live.viewers.get(channel)
        if viewer is None:
            self.error(channel, p.NO_SESSION, "This connection is no longer attached to the console session. "
                       "Reconnect to see it again.", sid=live.id)
            return live, None
        viewer.last_seen = time.monotonic()
        return live, viewer

    # --- messages ------------------------------------------------------------------------
    async def on_open(self, message: dict) -> None:
        channel = message.get("reply")
        if not channel:
            return
        if time.time() - float(message.get("at") or time.time()) > p.OPEN_MAX_AGE:
            log.warning("console daemon: ignoring an open request queued %.0fs ago",
                        time.time() - message["at"])
            return
        try:
            ctid = int(message["ctid"])
            mode = message.get("mode") or "root"
            asked = message.get("role") if message.get("role") in p.ROLES else "write"
            show_log = message.get("boot_log") is True
            try:
                size = check_size(message.get("rows", p.DEFAULT_ROWS), message.get("cols", p.DEFAULT_COLS))
            except Exception:
                size = (p.DEFAULT_ROWS, p.DEFAULT_COLS)
        except (KeyError, TypeError, ValueError):
            self.error(channel, p.BAD_MESSAGE, "The console request was not understood.")
            return
        from vzengine import NotFound, StateError, VZError

        try:
            session, created = await self.registry.open(
                ctid, lambda: session_argv(self.engine, ctid, mode, self.term), key=mode,
                boot=lambda: self.boot_watch(ctid, show_log),
                rows=size[0], cols=size[1], scrollback=self.scrollback,
            )
        except NotFound:
            self.error(channel, p.NO_SUCH_VE, f"VE {ctid} does not exist on node {self.node}.")
            return
        except StateError:
            self.error(channel, p.NOT_RUNNING, f"VE {ctid} is not running. Start it to use its console.")
            return
        except VZError as exc:
            self.error(channel, p.ATTACH_FAILED, f"The console of VE {ctid} could not be opened: {exc}")
            return
        except OSError as exc:
            log.exception("console daemon: cannot start a console in VE %s", ctid)
            self.error(channel, p.ATTACH_FAILED, f"The console of VE {ctid} could not be opened: {exc.strerror}")
            return
        try:
            live = self.live.get(session.id)
            if live is None:
                live = self.live[session.id] = LiveSession(self, session, mode)
            viewer = Viewer(channel=channel, user_id=message.get("user_id"),
                            username=str(message.get("username", "")))
            live.add(viewer, asked, size, created)
        except Exception:
            log.exception("console daemon: cannot attach to session %s of VE %s", session.id, ctid)
            self.error(channel, p.ATTACH_FAILED, f"The console of VE {ctid} could not be opened; see the node "
                       "agent's log.")
            return
        log.info("console %s of VE %s: %s attached as %s (%s)", session.id[:8], ctid, viewer.username,
                 viewer.role, "new" if created else "joined")

    def on_input(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is None:
            return
        if live.session.booting and live.writer is viewer:
            if not viewer.warned_booting:
                viewer.warned_booting = True
                live.to(viewer, "console.error", code=p.BOOTING,
                        message=f"VE {live.session.ctid} is still booting; keys typed before its shell starts "
                                "are not sent.")
            return
        if live.writer is not viewer:
            live.dropped_input += 1
            if not viewer.warned_read_only:
                viewer.warned_read_only = True
                writer = live.writer.username if live.writer else "nobody"
                live.to(viewer, "console.error", code=p.READ_ONLY,
                        message=f"You are watching read-only ({writer} is typing); your keys are not sent. "
                                "Take over to type.")
            return
        data = message.get("data")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray) or not data:
            return
        if not live.session.write(bytes(data[: p.MAX_INPUT])):
            live.to(viewer, "console.error", code=p.BUSY,
                    message="The VE is not reading its input; what you typed last was dropped.")

    def on_resize(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is None:
            return
        if live.writer is not viewer:
            return  # a watcher's window does not change the session; it shows the writer's size
        try:
            live.session.resize(message.get("rows"), message.get("cols"))
        except Exception as exc:
            live.to(viewer, "console.error", code=p.BAD_SIZE, message=str(exc))
            return
        live.broadcast_size(except_=viewer)

    def on_ack(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is None:
            return
        with contextlib.suppress(TypeError, ValueError):
            offset = int(message.get("offset"))
            if viewer.acked < offset <= viewer.offset:
                viewer.acked = offset
                live.wake.set()

    def on_takeover(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is not None:
            live.take_over(viewer)

    def on_release(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is not None:
            live.release(viewer)

    def on_keepalive(self, message: dict) -> None:
        self.find(message)

    def on_detach(self, message: dict) -> None:
        live = self.live.get(message.get("sid") or "")
        viewer = live.viewers.get(message.get("reply")) if live else None
        if viewer is not None:
            live.remove(viewer)

    async def on_close(self, message: dict) -> None:
        live, viewer = self.find(message)
        if viewer is None:
            return
        if live.writer is not viewer:
            live.to(viewer, "console.error", code=p.NOT_WRITER, message="Only the one typing can end the session.")
            return
        await live.end("access" if message.get("why") == "access" else "closed", viewer.username)

    async def on_ping(self, message: dict) -> None:
        viewers = sum(len(live.viewers) for live in self.live.values())
        dropped = sum(live.dropped_input for live in self.live.values())
        self.reply(message.get("reply"), "console.pong", node=self.node, sessions=len(self.live), viewers=viewers,
                   dropped_input=dropped)

    async def on_close_ve(self, message: dict) -> None:
        ctid = int(message["ctid"])
        ending = [live for live in self.live.values() if live.session.ctid == ctid]
        await asyncio.gather(*(live.end("close_ve", str(message.get("why", ""))) for live in ending))
        self.reply(message.get("reply"), "console.closed_ve", ctid=ctid, count=len(ending))

    # --- ending sessions -----------------------------------------------------------------
    async def _reap_forever(self) -> None:
        tick = max(0.2, min(30.0, self.linger / 4, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                await self.reap()
            except Exception:
                log.exception("console daemon: reaping failed")

    async def reap(self) -> None:
        """Drop viewers gone silent; end sessions left alone past linger or without input past the idle timeout."""
        now = time.monotonic()
        for live in list(self.live.values()):
            if live.end_reason is not None:
                continue
            for viewer in list(live.viewers.values()):
                if now - viewer.last_seen > p.VIEWER_TIMEOUT:
                    live.remove(viewer)
            if not live.viewers and now - live.detached_at > self.linger:
                self.spawn(live.end("detached"))
            elif live.session.input_idle_for() > self.idle_timeout:
                self.spawn(live.end("idle"))

    async def close_all(self, reason: str) -> None:
        lives = list(self.live.values())
        await asyncio.gather(*(live.end(reason) for live in lives), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(live.task for live in lives), return_exceptions=True), 5)
        await self.registry.close_all()

    async def exit_message(self, live: LiveSession, reason: str) -> str:
        ctid = live.session.ctid
        if reason == "idle":
            return f"The console was closed after {_duration(self.idle_timeout)} without input."
        if reason == "closed":
            return f"{live.end_by or 'The user typing'} ended the console session."
        if reason == "access":
            return f"The console was closed: {live.end_by or 'the user typing'} no longer has access to VE {ctid}."
        if reason == "close_ve":
            return f"The console was closed by the node agent so that VE {ctid} can be suspended or moved."
        if reason == "shutdown":
            return f"The console service of node {self.node} stopped."
        if reason == "detached":
            return "The console was closed after nobody watched it for a while."
        try:
            running = await asyncio.to_thread(self.engine.is_running, ctid)
        except Exception:
            running = True
        if not running:
            if live.session.boot_result == "stopped":
                return f"VE {ctid} stopped while booting; its console has ended."
            return f"VE {ctid} stopped; its console has ended."
        code = live.session.returncode
        return "The shell has ended" + (f" (exit status {code})." if code is not None else ".")


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"


async def serve(node: str, **options) -> None:
    """Run a console daemon for node on the configured channel layer and the engine in $VZ_ROOT."""
    from channels.layers import get_channel_layer

    from vzengine import Engine

    daemon = ConsoleDaemon(get_channel_layer(), Engine(), node, **options)
    await daemon.run()
