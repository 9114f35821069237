"""Websocket guards: only pages of the panel itself may open the panel's websockets, and a socket stays
open only while its user may still see what it shows (`AccessRecheck`).

Browsers send cookies with a cross-site websocket handshake, and websockets are not subject to
CORS, so without this check any web page a logged-in user visits could open their VE's console.
The handshake's Origin must be the address the request was sent to (its Host), or one of
CSRF_TRUSTED_ORIGINS (for a proxy that rewrites Host); otherwise the socket is refused with 4403.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from django.conf import settings

CROSS_ORIGIN = 4403
log = logging.getLogger("vzpanel.websocket")
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _netloc(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    host, sep, port = netloc.rpartition(":")
    if sep and not netloc.endswith("]") and port == DEFAULT_PORTS.get(scheme):
        return host
    return netloc


def same_origin(headers: dict[bytes, bytes]) -> bool:
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    host = headers.get(b"host", b"").decode("latin-1").strip()
    if not origin or origin == "null" or not host:
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _netloc(parts.scheme, parts.netloc) == _netloc(parts.scheme, host)


class SameOriginMiddleware:
    """Refuse websocket handshakes from other origins (close code 4403) before anything else runs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not same_origin(dict(scope.get("headers") or [])):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": CROSS_ORIGIN})
            return None
        return await self.app(scope, receive, send)


class AccessRecheck:
    """Ask `allowed()` every ``settings.CONSOLE_RECHECK`` seconds while a socket is open; call `gone()` once
    it says no (the user lost access: disabled, a VE given away or destroyed, a student who left the
    course). A failed check (the database briefly away) keeps the socket and asks again later.
    """

    def __init__(self, allowed: Callable[[], Awaitable[bool]], gone: Callable[[], Awaitable[None]], what: str):
        self.allowed, self.gone, self.what = allowed, gone, what
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    def stop(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def run(self) -> None:
        period = max(0.1, float(settings.CONSOLE_RECHECK))
        while True:
            await asyncio.sleep(period)
            try:
                ok = await self.allowed()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("re-checking access to %s failed", self.what)
                continue
            if not ok:
                await self.gone()
                return
