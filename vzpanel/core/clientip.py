"""The client's address: the direct peer, or what a configured reverse proxy says it forwarded.

X-Forwarded-For is only a claim. Anyone can send it, so it counts only when the direct peer (the ASGI
server's REMOTE_ADDR) is one of VZPANEL_TRUSTED_PROXIES; then the header is read right to left, skipping
further trusted proxies, and the first address that is not one of them is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# request.META keys: the resolved address is written back to REMOTE_ADDR, the peer kept beside it.
PEER_KEY = "VZPANEL_PEER_ADDR"
RESOLVED_KEY = "VZPANEL_CLIENT_ADDR"
# Headers only a trusted proxy may set; from anyone else they are dropped before Django reads them.
FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                     "HTTP_X_FORWARDED_PORT", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """Parse comma-separated addresses or networks ("10.0.0.1, 192.0.2.0/24, ::1")."""
    items = text.split(",") if isinstance(text, str) else text
    networks = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"VZPANEL_TRUSTED_PROXIES: {item!r} is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/24)"
            ) from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _trusted(configured: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(configured)


def trusted_proxies() -> tuple[Network, ...]:
    """Return the configured proxies (settings.VZPANEL_TRUSTED_PROXIES)."""
    configured = getattr(settings, "VZPANEL_TRUSTED_PROXIES", ())
    if isinstance(configured, str):
        configured = configured.split(",")
    return _trusted(tuple(str(c) for c in configured))


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_trusted(address, proxies: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == n.version and address in n for n in proxies)


def resolve(peer: str | None, forwarded_for: str | None, proxies: tuple[Network, ...]) -> str | None:
    """Return the client address for a connection from peer that carried forwarded_for."""
    current = _address(peer)
    if current is None:
        return peer or None
    if not proxies or not forwarded_for or not is_trusted(current, proxies):
        return str(current)
    for hop in reversed(forwarded_for.split(",")):
        address = _address(hop)
        if address is None:
            break  # garbage: the last address a trusted proxy vouched for is the best we know
        current = address
        if not is_trusted(address, proxies):
            break
    return str(current)


def client_ip(request) -> str | None:
    """Return the address request came from (also AXES_CLIENT_IP_CALLABLE)."""
    if request is None:
        return None
    meta = request.META
    if RESOLVED_KEY in meta:
        return meta[RESOLVED_KEY]
    return resolve(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"), trusted_proxies())


def scope_client_ip(scope) -> str | None:
    """Return the client address of an ASGI scope (a websocket's), by the same rule."""
    client = scope.get("client") or (None, None)
    forwarded = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
    return resolve(client[0], forwarded, trusted_proxies())


class ClientIPMiddleware:
    """Put the real client address in REMOTE_ADDR and drop forwarding headers no trusted proxy sent.

    Must come first in MIDDLEWARE: SecurityMiddleware's HTTPS redirect reads X-Forwarded-Proto (through
    SECURE_PROXY_SSL_HEADER), and the audit log and django-axes read REMOTE_ADDR.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        self.process(request)
        return self.get_response(request)  # a coroutine when the chain is async: returned for awaiting

    @staticmethod
    def process(request) -> None:
        meta = request.META
        if RESOLVED_KEY in meta:
            return
        peer = meta.get("REMOTE_ADDR")
        proxies = trusted_proxies()
        client = resolve(peer, meta.get("HTTP_X_FORWARDED_FOR"), proxies)
        if not is_trusted(_address(peer), proxies):
            for header in FORWARDED_HEADERS:
                meta.pop(header, None)
        meta[PEER_KEY] = peer
        meta[RESOLVED_KEY] = client
        if client:
            meta["REMOTE_ADDR"] = client
