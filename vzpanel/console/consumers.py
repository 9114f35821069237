"""The console websocket: ws/ves/<ctid>/console/?rows=24&cols=80&role=write|watch.

A thin relay. It checks who is asking (logged in, allowed on the VE by access.py; the origin is
checked before it, in vzpanel.core.websocket), validates every message from the browser, and
passes it to the console daemon of the VE's node over the channel layer; what the daemon sends
back goes to the browser: terminal output as binary frames, everything else as JSON. It holds no
terminal state and no authority over roles: the daemon decides who may type.

Access is checked again every ``settings.CONSOLE_RECHECK`` seconds while the socket is open (the
user re-read from the database, then access.py): when the user may no longer see the VE (it was
given to someone else or destroyed, the account was disabled, a student left the course) the
terminal is told why and the socket closes with 4404, as for an outsider; a session that user
was typing in ends, since its shell and output were theirs.
"""

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from vzpanel.audit import log as audit_log
from vzpanel.ves.access import find_ve
from vzpanel.ves.services import refuse_if_locked

from . import hooks
from . import protocol as p

WAKE_WAIT = 30  # seconds a console waits for a sleeping VE to be woken before attaching anyway
BROWSER_TYPES = ("input", "resize", "ack", "takeover", "release", "close", "ping")
log = logging.getLogger("vzpanel.console")


class ConsoleConsumer(AsyncWebsocketConsumer):
    async def dispatch(self, message):
        # Channels runs close_old_connections() in the sync thread before every message: a thread hop,
        # shared by all consumers of the process, for each keystroke and each piece of output. This
        # consumer reaches the database only through database_sync_to_async, which does that itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.sid = None
        self.role = None
        self.ended = False
        self.asked_takeover = False
        self.held: list[tuple[str, dict]] = []  # messages for the daemon until the session is open
        self.held_bytes = 0
        self.open_timer = None
        self.rechecker = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=p.CLOSE_UNAUTHENTICATED)
            return
        if not await self.authorise(user):
            await self.close(code=p.CLOSE_NOT_FOUND)
            return
        if self.locked:  # a locked VE (VE.locked) is out of its owner's hands: no console either; says why
            await self.accept()
            await self.send_json({"type": "error", "code": p.ACCESS_GONE, "message": self.locked})
            await self.close(code=p.CLOSE_NOT_FOUND)
            return
        await self.accept()
        self.rechecker = asyncio.create_task(self.recheck_forever(user.pk))
        await self.wait_for_waking(user)
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        rows, cols = p.DEFAULT_ROWS, p.DEFAULT_COLS
        if "rows" in query or "cols" in query:
            try:
                rows, cols = p.clean_size(_first(query, "rows"), _first(query, "cols"))
            except p.BadMessage as exc:
                await self.problem(exc.code, f"{exc} Opening the console at {rows}x{cols}.")
        self.asked = "watch" if _first(query, "role") == "watch" else "write"
        # boot=1: the page has just started the VE and wants its boot messages even if it has booted already
        boot_log = _first(query, "boot") == "1"
        sent = await self.to_daemon("console.open", ctid=self.ve.ctid, mode=self.mode, rows=rows, cols=cols,
                                    role=self.asked, user_id=user.pk, username=user.get_username(), at=time.time(),
                                    boot_log=boot_log)
        if sent:
            self.open_timer = asyncio.create_task(self.open_timeout())

    async def wait_for_waking(self, user) -> None:
        """Let other apps act on the opening (the classroom wakes a class VE it put to sleep), and wait up to
        WAKE_WAIT seconds for what they started. The wait is here, between short database reads, not in
        one: database_sync_to_async runs every consumer's reads on one thread, which a sleep would hold."""
        waiting = await database_sync_to_async(hooks.opening)(user, self.ve)
        deadline = time.monotonic() + WAKE_WAIT
        while waiting and not self.ended and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            waiting = await database_sync_to_async(hooks.unfinished)(waiting)

    @database_sync_to_async
    def authorise(self, user) -> bool:
        ve = find_ve(user, self.scope["url_route"]["kwargs"]["ctid"])
        if ve is None:
            return False
        self.ve = ve
        self.locked = refuse_if_locked(user, ve, "console")
        plan = ve.owner.plan if ve.owner is not None else None
        self.mode = plan.console_mode if plan is not None else "root"
        self.daemon = p.daemon_channel(ve.node.name)
        self.node_name = ve.node.name
        return True

    async def open_timeout(self):
        await asyncio.sleep(p.OPEN_TIMEOUT)
        if self.sid is None and not self.ended:
            await self.fail(p.AGENT_UNAVAILABLE,
                            f"The console service of node {self.node_name} is not answering. Try again in a moment.")

    # --- access, again while open ------------------------------------------------------------
    async def recheck_forever(self, user_pk: int) -> None:
        period = max(0.1, float(settings.CONSOLE_RECHECK))
        while not self.ended:
            await asyncio.sleep(period)
            if self.ended:
                return
            try:
                allowed = await self.still_allowed(user_pk)
            except Exception:  # the database is briefly unavailable: keep the console, ask again later
                log.exception("console: re-checking access to VE %s failed", self.ve.ctid)
                continue
            if not allowed:
                await self.access_gone()
                return

    @database_sync_to_async
    def still_allowed(self, user_pk: int) -> bool:
        """Whether the user, as the database has them now, may still see this VE (the rule of access.py)."""
        user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
        if user is None:
            return False
        ve = find_ve(user, self.ve.ctid)
        return ve is not None and ve.pk == self.ve.pk and not refuse_if_locked(user, ve, "console")

    async def access_gone(self) -> None:
        if self.ended:
            return
        if self.sid is not None:
            # The writer's session ends (its shell and output were theirs); a watcher just leaves it.
            if self.role == p.WRITER:
                await self.to_daemon("console.close", quiet=True, why="access")
            else:
                await self.to_daemon("console.detach", quiet=True)
        self.ended = True
        if self.open_timer is not None:
            self.open_timer.cancel()
        ctid = self.ve.ctid
        await self.send_json({"type": "error", "code": p.ACCESS_GONE,
                              "message": f"You no longer have access to VE {ctid}; its console was closed."})
        await self.close(code=p.CLOSE_NOT_FOUND)
        try:
            await self.audit("console.revoked", result="denied",
                             detail=f"access to VE {ctid} ended while its console was open"
                                    + (f" (session {self.sid[:8]})" if self.sid else ""))
        except Exception:  # the user or VE row is gone altogether
            log.warning("console: could not audit the end of access to VE %s", ctid, exc_info=True)

    async def disconnect(self, code):
        if self.rechecker is not None and self.rechecker is not asyncio.current_task():
            self.rechecker.cancel()
        if self.open_timer is not None:
            self.open_timer.cancel()
        if self.sid is not None and not self.ended:
            self.ended = True
            await self.to_daemon("console.detach", quiet=True)

    # --- to the daemon -------------------------------------------------------------------
    async def to_daemon(self, type_: str, quiet: bool = False, **fields) -> bool:
        message = {"type": type_, "reply": self.channel_name, "sid": self.sid, **fields}
        try:
            await self.channel_layer.send(self.daemon, message)
            return True
        except ChannelFull:
            problem = f"The console service of node {self.node_name} is overloaded. Try again in a moment."
        except Exception:
            problem = "The panel cannot reach the node agents (channel layer unavailable). Try again in a moment."
        if not quiet:
            await self.fail(p.AGENT_UNAVAILABLE, problem)
        return False

    async def relay(self, type_: str, **fields) -> None:
        """Send to the daemon once the session is open; hold it until then."""
        if self.ended:
            await self.problem(p.NO_SESSION, "The console is not open. Reconnect to open it again.")
        elif self.sid is None:
            self.held.append((type_, fields))
        else:
            await self.to_daemon(type_, **fields)

    # --- from the browser ----------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        try:
            if bytes_data is not None:
                await self.on_input(bytes_data)
                return
            try:
                message = json.loads(text_data)
            except ValueError:
                raise p.BadMessage("A message from the browser was not valid JSON; it was ignored.") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise p.BadMessage('A message from the browser must be a JSON object with a "type"; it was ignored.')
            kind = message["type"]
            if kind not in BROWSER_TYPES:
                raise p.BadMessage(f"Unknown message type {kind[:40]!r} (expected one of {', '.join(BROWSER_TYPES)}); "
                                   "it was ignored.")
            await getattr(self, f"on_{kind}")(message)
        except p.BadMessage as exc:
            await self.problem(exc.code, str(exc))

    async def on_input(self, data):
        if isinstance(data, dict):
            data = data.get("data")
            if not isinstance(data, str):
                raise p.BadMessage('An input message needs "data", a string.')
            data = data.encode("utf-8", "replace")
        if len(data) > p.MAX_INPUT:
            raise p.BadMessage(f"{len(data)} bytes of input at once is too much (at most {p.MAX_INPUT}); "
                               "it was not sent.")
        if not data:
            return
        if self.sid is None and not self.ended:
            if self.held_bytes + len(data) > p.MAX_INPUT:
                raise p.BadMessage("The console is still opening; input beyond 64 KiB was dropped.")
            self.held_bytes += len(data)
        await self.relay("console.input", data=bytes(data))

    async def on_resize(self, message):
        rows, cols = p.clean_size(message.get("rows"), message.get("cols"))
        await self.relay("console.resize", rows=rows, cols=cols)

    async def on_ack(self, message):
        offset = message.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise p.BadMessage('An ack needs "offset", a byte count.')
        await self.relay("console.ack", offset=offset)

    async def on_takeover(self, message):
        self.asked_takeover = True
        await self.relay("console.takeover")

    async def on_release(self, message):
        await self.relay("console.release")

    async def on_close(self, message):
        await self.relay("console.close")

    async def on_ping(self, message):
        if self.sid is not None and not self.ended:
            await self.to_daemon("console.keepalive")
        await self.send_json({"type": "pong"})

    # --- from the daemon -----------------------------------------------------------------
    async def console_opened(self, event):
        if self.ended or self.sid is not None:
            if event["sid"] != self.sid:  # too late (timed out) or a second answer: let that session go
                await self.channel_layer.send(self.daemon, {"type": "console.detach", "reply": self.channel_name,
                                                            "sid": event["sid"]})
            return
        if self.open_timer is not None:
            self.open_timer.cancel()
        self.sid, self.role = event["sid"], event["role"]
        await self.send_json({"type": "opened", **_public(event)})
        for type_, fields in self.held:
            await self.to_daemon(type_, **fields)
        self.held.clear()
        mode = "login prompt" if event.get("mode") == "login" else "root shell"
        role = "typing" if self.role == p.WRITER else f"watching ({event.get('writer') or 'nobody'} typing)"
        new = "new" if event.get("created") else "joined"
        await self.audit("console.open", detail=f"{mode}, {role}, {new} session {self.sid[:8]}")

    async def console_output(self, event):
        if event.get("sid") == self.sid and not self.ended:
            await self.send(bytes_data=event["data"])

    async def console_error(self, event):
        if self.sid is None and not self.ended:  # the open failed
            await self.audit("console.open", result="failed", detail=f"{event['code']}: {event['message']}")
            await self.fail(event["code"], event["message"])
        elif event.get("code") == p.NO_SESSION and event.get("sid") in (None, self.sid):
            await self.fail(event["code"], event["message"])
        else:
            await self.problem(event["code"], event["message"])

    async def console_role(self, event):
        if event.get("sid") != self.sid:
            return
        self.role = event["role"]
        await self.send_json({"type": "role", **_public(event)})
        if self.asked_takeover and self.role == p.WRITER and event.get("reason") == "takeover":
            self.asked_takeover = False
            await self.audit("console.takeover", detail=f"session {self.sid[:8]}")

    async def console_booted(self, event):
        if event.get("sid") == self.sid and not self.ended:
            await self.send_json({"type": "booted", "result": event.get("result")})

    async def console_resized(self, event):
        if event.get("sid") == self.sid:
            await self.send_json({"type": "size", "rows": event["rows"], "cols": event["cols"]})

    async def console_skipped(self, event):
        if event.get("sid") == self.sid:
            await self.send_json({"type": "skipped", "offset": event["offset"], "lost": event["lost"]})

    async def console_notice(self, event):
        if event.get("sid") == self.sid:
            await self.send_json({"type": "notice", "message": event["message"]})

    async def console_exited(self, event):
        if event.get("sid") != self.sid or self.ended:
            return
        self.ended = True
        await self.send_json({"type": "exited", "reason": event["reason"], "message": event["message"],
                              "code": event.get("code")})
        await self.close(code=p.CLOSE_ENDED)

    # --- helpers -------------------------------------------------------------------------
    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    async def problem(self, code: str, message: str) -> None:
        """Tell the browser about a problem; the console stays as it is."""
        await self.send_json({"type": "error", "code": code, "message": message})

    async def fail(self, code: str, message: str) -> None:
        """Tell the browser why there is no console, and close the websocket."""
        if self.ended:
            return
        self.ended = True
        if self.open_timer is not None and self.open_timer is not asyncio.current_task():
            self.open_timer.cancel()
        await self.problem(code, message)
        await self.close(code=p.CLOSE_ENDED)

    @database_sync_to_async
    def audit(self, action: str, result: str = "ok", detail: str = ""):
        client = self.scope.get("client") or [None]
        audit_log.record(action, user=self.scope["user"], ve=self.ve, result=result, detail=detail, ip=client[0])


def _first(query: dict, name: str):
    values = query.get(name)
    return values[0] if values else None


def _public(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "type"}
