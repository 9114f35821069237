"""Websocket guard: only pages of the panel itself may open the panel's websockets.

Browsers send cookies with a cross-site websocket handshake, and websockets are not subject to
CORS, so without this check any web page a logged-in user visits could open their VE's console.
The handshake's Origin must be the address the request was sent to (its Host), or one of
CSRF_TRUSTED_ORIGINS (for a proxy that rewrites Host); otherwise the socket is refused with 4403.
"""

from urllib.parse import urlsplit

from django.conf import settings

CROSS_ORIGIN = 4403
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
