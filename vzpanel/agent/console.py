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
import contextlib
import logging
import signal
import time

from channels.exceptions import ChannelFull

from vzengine.console import BootWatch, SessionRegistry, check_size, run_id, session_argv
from vzpanel.console import protocol as p

from .console_session import LiveSession, Viewer

log = logging.getLogger("vzpanel.console")


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
