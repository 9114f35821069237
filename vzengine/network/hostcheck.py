"""Conflicts with the host itself: addresses it has or routes elsewhere, ports it serves, bridges.

Each engine root knows only its own VEs' addresses, and several roots may share a pool, so
before an address goes to a VE the host is asked too (``host_use``): an address the host has
on an interface of its own, or routes by a /32 or /128 route to an interface that is not this
VE's veth (another root's VE, or any other tool's), is refused.
"""

from __future__ import annotations

from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING

from .addresses import Address

if TYPE_CHECKING:
    from ..netlink import Netlink, Route

RTN_NAMES = {6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}


def host_use(host: Netlink, addr: Address, own: str, route: Route | EllipsisType | None = ...) -> str | None:
    """Why ``addr`` cannot go to the VE whose host-side veth is ``own``: the host has it on one of
    its interfaces, or routes it (a /32 or /128 route, of any engine root or tool) to another
    interface; None when it is free. ``host`` is a Netlink of the host; ``route`` its lookup, if
    already made."""
    if route is ...:
        route = host.lookup(addr)
    if route is None:
        return None
    if route.local:
        dev = host.name(route.oif) if route.oif is not None else ""
        return f"{addr} is already in use on this host (an address of its own{f' on {dev}' if dev else ''})"
    if route.dst.prefixlen != route.dst.max_prefixlen:
        return None  # a subnet or the default route: nobody has this address in particular
    if route.oif is None:
        return f"{addr} is already in use on this host (a {RTN_NAMES.get(route.type, 'special')} route)"
    dev = host.name(route.oif)
    if dev != own:
        return f"{addr} is already in use on this host (routed to {dev or f'interface {route.oif}'})"
    return None


def listening(proto: str, port: int) -> bool:
    """Whether a socket of the host's namespace listens on (tcp) or is bound to (udp) ``port``."""
    for suffix in ("", "6"):
        try:
            with open(f"/proc/net/{proto}{suffix}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 4:
                        continue
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    state = fields[3]
                    if local_port == port and (state == "0A" if proto == "tcp" else state == "07"):
                        return True
        except OSError:
            continue
    return False


def link_exists(name: str) -> bool:
    """Whether the host has an interface ``name`` (sysfs: no netlink socket needed)."""
    return Path("/sys/class/net", name).exists()


def is_bridge(name: str) -> bool:
    return Path("/sys/class/net", name, "bridge").is_dir()


def read_sysctl(path: str) -> str:
    """A /proc/sys value ("" when it cannot be read)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
