"""A VE's links taken out of it for a CRIU checkpoint, and put back (checkpoint.py's network part).

CRIU cannot restore a veth whose peer lives on the host, and it cannot restore a TCP socket
whose address or route is gone. So before a dump each veth of the VE is parked in the host's
namespace under a name of the root (naming.park_name), its addresses and routes noted, while
its addresses stay on the VE's lo as stand-ins and a default route points at lo. If the dump
fails the links go back as they were (``reattach``); if it succeeds the parked links are deleted,
and after a restore the network feature makes the links anew (``after_start``) and the stand-ins
are taken away (``drop_stand_ins``). Bridged interfaces (NETIF), whose addresses the VE set
itself, get them back from the checkpoint's marker (``bridged`` writes them there, ``readdress``
reads them back).

All of it through the netlink wrapper, in the VE's namespace as its init ``pid`` sees it. What
the marker holds was read from inside the VE, so it is parsed back strictly before use. Its
routes keep the form of ``ip route add`` arguments ("-4", dst, "via", gw, "onlink", "metric", n),
so checkpoints written before still resume.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CommandFailed
from .addresses import host_iface, parse_ifname, parse_netifs
from .naming import PARK_SLOTS, park_name

if TYPE_CHECKING:
    from ..netlink import Netlink, StaticRoute

DEFAULT = {"-4": ipaddress.ip_network("0.0.0.0/0"), "-6": ipaddress.ip_network("::/0")}
FAMILIES = {"-4": socket.AF_INET, "-6": socket.AF_INET6}


@dataclass
class Parked:
    name: str  # the link's name inside the VE
    park: str  # its name on the host while the VE is being dumped
    addrs: list[str] = field(default_factory=list)  # "address/prefix"
    routes: list[list[str]] = field(default_factory=list)  # `ip route add` arguments


@dataclass
class Detached:
    """What ``detach`` changed, so it can be undone (dump failed) or finished (dump done)."""

    parked: list[Parked] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)  # addresses put on lo
    lo_routes: list[str] = field(default_factory=list)  # "-4" / "-6": default routes put on lo


@contextlib.contextmanager
def _ve(pid: int) -> Iterator[Netlink]:
    """A Netlink of the network namespace of the VE whose init is ``pid`` (CommandFailed when it is gone)."""
    from ..netlink import Netlink

    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CommandFailed(f"the VE's network namespace (init pid {pid}) is gone: {e.strerror}") from None
    try:
        with Netlink.of_netns(fd) as ve:
            yield ve
    finally:
        os.close(fd)


def _family(addr: str) -> str:
    return "-6" if ":" in addr else "-4"


def route_args(family: str, route: StaticRoute) -> list[str]:
    """A StaticRoute as the `ip route add` arguments the marker keeps."""
    args = [family, "default" if route.dst.prefixlen == 0 else str(route.dst)]
    if route.gateway is not None:
        args += ["via", str(route.gateway)]
    if route.onlink:
        args.append("onlink")
    if route.metric:
        args += ["metric", str(route.metric)]
    return args


def parse_route_args(args: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, dict] | None:
    """(destination, add_route keyword arguments) of a kept route; None for anything else."""
    if not isinstance(args, list) or len(args) < 2 or not all(isinstance(a, str) for a in args):
        return None
    family, dst, rest = args[0], args[1], args[2:]
    if family not in DEFAULT:
        return None
    kwargs: dict = {}
    try:
        net = DEFAULT[family] if dst == "default" else ipaddress.ip_network(dst, strict=False)
        while rest:
            word = rest.pop(0)
            if word == "via" and rest:
                kwargs["gateway"] = ipaddress.ip_address(rest.pop(0))
            elif word == "onlink":
                kwargs["onlink"] = True
            elif word == "metric" and rest and rest[0].isdigit():
                kwargs["metric"] = int(rest.pop(0))
            else:
                return None
    except ValueError:
        return None
    if net.version != (4 if family == "-4" else 6) or kwargs.get("gateway", net).version != net.version:
        return None
    return net, kwargs


def _interface(value: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    try:
        return ipaddress.ip_interface(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _add_routes(ve: Netlink, name: str, routes: list) -> None:
    from ..netlink import NetlinkError

    for args in routes:
        parsed = parse_route_args(args)
        if parsed is not None:
            with contextlib.suppress(NetlinkError):
                ve.add_route(parsed[0], name, **parsed[1])


def detach(pid: int, tag: str, ctid: int, st: Detached) -> None:
    """Take the VE's veth links out of it for the dump (onto the host), keeping their addresses on lo."""
    from ..netlink import NetlinkError

    try:
        with _ve(pid) as ve, open("/proc/self/ns/net", "rb") as host_ns:
            veths = [link.name for link in ve.links() if link.kind == "veth"]
            for i, name in enumerate(veths[:len(PARK_SLOTS)]):
                parked = Parked(name=name, park=park_name(tag, ctid, i))
                for family, af in FAMILIES.items():
                    parked.routes += [route_args(family, r) for r in ve.static_routes(af, name)]
                for iface in ve.global_addresses(name):
                    parked.addrs.append(str(iface))
                    stand_in = str(host_iface(iface.ip))
                    ve.add_address("lo", host_iface(iface.ip), exist_ok=False)
                    st.stand_ins.append(stand_in)
                ve.set_down(name)
                ve.rename(name, parked.park)
                st.parked.append(parked)
                ve.move_to_netns(parked.park, host_ns.fileno())
            for family in sorted({_family(a) for a in st.stand_ins}):
                ve.add_route(DEFAULT[family], "lo", exist_ok=False)
                st.lo_routes.append(family)
    except (NetlinkError, OSError) as e:
        raise CommandFailed(f"could not take VE {ctid}'s links out of it for the checkpoint: "
                            f"{e.strerror or e}") from None


def reattach(pid: int, st: Detached) -> None:
    """Undo ``detach`` on a VE that keeps running (the dump failed)."""
    from ..netlink import Netlink, NetlinkError

    with _ve(pid) as ve:
        for family in st.lo_routes:
            with contextlib.suppress(NetlinkError):
                ve.del_route(DEFAULT[family], "lo")
        for parked in reversed(st.parked):
            if os.path.exists(f"/sys/class/net/{parked.park}"):  # on the host: bring it home
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    with Netlink() as host:
                        host.move_to_netns(parked.park, fd)
                except NetlinkError as e:
                    raise CommandFailed(f"could not move the VE's link {parked.name} back: {e.strerror}") from None
                finally:
                    os.close(fd)
            with contextlib.suppress(NetlinkError):
                ve.rename(parked.park, parked.name)
            try:
                ve.set_up(parked.name)
            except NetlinkError as e:
                raise CommandFailed(f"could not bring the VE's link {parked.name} up again: {e.strerror}") from None
            for addr in parked.addrs:
                with contextlib.suppress(NetlinkError):
                    ve.add_address(parked.name, ipaddress.ip_interface(addr))
            _add_routes(ve, parked.name, parked.routes)
    drop_stand_ins(pid, st.stand_ins, routes=False)


def drop_parked(st: Detached) -> None:
    """Delete the parked links from the host (the dump is done, or the VE stopped)."""
    if not st.parked:
        return
    from ..netlink import Netlink, NetlinkError

    with Netlink() as host:
        for parked in st.parked:
            with contextlib.suppress(NetlinkError):
                host.delete_link(parked.park)


def drop_stand_ins(pid: int, addrs: list[str], routes: bool = True, addresses: bool = True) -> None:
    """Remove the lo stand-ins: the routes before the network feature adds the real ones, the
    addresses after (TCP sockets bound to them keep working once the real link has them)."""
    from ..netlink import NetlinkError

    with contextlib.suppress(CommandFailed), _ve(pid) as ve:  # a VE that is gone has no stand-ins left
        if routes:
            for family in sorted({_family(a) for a in addrs if isinstance(a, str)}):
                with contextlib.suppress(NetlinkError):
                    ve.del_route(DEFAULT[family], "lo")
        if addresses:
            for addr in addrs:
                iface = _interface(addr)
                if iface is not None:
                    with contextlib.suppress(NetlinkError):
                        ve.del_address("lo", iface)


def bridged(netif: str, st: Detached) -> list[dict]:
    """The addresses and routes the VE had on its bridged interfaces (NETIF value ``netif``): the
    network feature makes those interfaces anew on resume, with their MACs, but the VE configured them itself."""
    names = {n.ifname for n in parse_netifs(netif)}
    return [{"name": p.name, "addrs": p.addrs, "routes": p.routes} for p in st.parked if p.name in names]


def readdress(pid: int, links: list[dict]) -> None:
    """Give the VE's new bridged interfaces the addresses and routes it had before the suspend."""
    from ..errors import InvalidInput
    from ..netlink import NetlinkError

    with contextlib.suppress(CommandFailed), _ve(pid) as ve:  # a VE that is gone needs no addresses
        for link in links:
            # The marker was written by the engine, but what it holds was read from inside the VE.
            try:
                given = link.get("name")
                name = parse_ifname(given, "interface name") if isinstance(given, str) else None
            except InvalidInput:
                name = None
            if name is None or ve.link(name) is None:
                continue
            for addr in link.get("addrs", []):
                iface = _interface(addr)
                if iface is not None:
                    with contextlib.suppress(NetlinkError):
                        ve.add_address(name, iface)
            _add_routes(ve, name, link.get("routes", []))
