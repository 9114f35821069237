"""A small typed wrapper over pyroute2: the only module of the engine that imports it.

``Netlink()`` talks to the host's network namespace; ``Netlink.of_netns(fd)`` to another one
(a VE's). pyroute2 0.9 opens a socket in another namespace by forking a child that calls
setns() and passes the socket back (its docs, "Using the library in threaded environments",
warn that a fork of a threaded process can leave the child in a bad state, and it costs
~10 ms). We do the same without a fork: a short-lived helper thread calls setns(), which
moves only that thread, opens the netlink socket there and ends; the socket keeps working
in the namespace it was created in, and the caller's own namespace never changes.

pyroute2 decodes every attribute of every message in Python (about 1 ms per interface of a
dump), so nothing here dumps all interfaces on a hot path: interfaces are named by index
(if_nametoindex in the host's namespace), and routes are looked up with a FIB match query.

Every object is a context manager: the socket and pyroute2's event loop are always closed.
Errors come out as NetlinkError (with the errno), so callers can tell EEXIST from ENOENT
without knowing pyroute2.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY
from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

CLONE_NEWNET = 0x40000000
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_LOCAL = 2
RTPROT_KERNEL = 2  # made by the kernel along with an address or a link
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTM_F_FIB_MATCH = 0x2000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Dev = str | int  # an interface, by name or index


class NetlinkError(OSError):
    """A netlink request failed; ``errno`` says why (EEXIST, ENOENT, EPERM, ...)."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # veth, dummy, bridge, ... ("" for physical or unknown)
    peer_index: int | None  # IFLA_LINK: for a veth, its peer's index (in the peer's namespace)
    up: bool


@dataclass(frozen=True)
class StaticRoute:
    """A route of the main table that was added (not made by the kernel): enough to add it again."""

    dst: Network
    gateway: Address | None
    onlink: bool
    metric: int | None


@dataclass(frozen=True)
class Route:
    """The route the kernel would use for an address (a FIB match, like `ip route get fibmatch`)."""

    dst: Network
    type: int  # RTN_UNICAST, RTN_LOCAL, ...
    oif: int | None
    gateway: Address | None

    @property
    def local(self) -> bool:
        return self.type == RTN_LOCAL

    @property
    def connected(self) -> bool:
        """A directly connected subnet (not a host route, not the default, no gateway)."""
        return (self.type == RTN_UNICAST and self.gateway is None and self.oif is not None
                and 0 < self.dst.prefixlen < self.dst.max_prefixlen)


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetlinkError(err, f"setns: {os.strerror(err)}")


def netns_socket(netns_fd: int, family: int = socket.AF_NETLINK, kind: int = socket.SOCK_DGRAM,
                 proto: int = 0) -> socket.socket:
    """Open a socket (by default NETLINK_ROUTE) inside the network namespace ``netns_fd`` refers to."""
    out: dict = {}

    def helper() -> None:
        try:
            _setns(netns_fd)  # this thread only; it ends right after
            out["sock"] = socket.socket(family, kind, proto)
        except BaseException as e:  # handed to the caller
            out["error"] = e

    t = threading.Thread(target=helper, name="vz-netns", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


def _wrap(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except _PyrNetlinkError as e:
        raise NetlinkError(e.code, f"netlink: {os.strerror(e.code)}") from None


def _family(addr: Address | Network | Interface) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class Netlink:
    """Route netlink in one network namespace: links (veths, bridged veths, ifbs), addresses,
    routes, proxy neighbours."""

    def __init__(self, sock: socket.socket | None = None):
        self._local = sock is None  # the caller's own namespace: if_nametoindex works there
        self._index: dict[str, int] = {}
        if sock is None:
            self._ipr = IPRoute()
        else:
            fd = sock.detach()
            try:
                self._ipr = IPRoute(fileno=fd)  # owns the fd from now on
            except BaseException:
                os.close(fd)
                raise

    @classmethod
    def of_netns(cls, netns_fd: int) -> Netlink:
        return cls(netns_socket(netns_fd))

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- links ----------------------------------------------------------------------------
    @staticmethod
    def _link(msg: Any) -> Link:  # a pyroute2 ifinfmsg (pyroute2 has no types)
        kind = ""
        info = msg.get_attr("IFLA_LINKINFO")
        if info is not None:
            kind = info.get_attr("IFLA_INFO_KIND") or ""
        return Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                    peer_index=msg.get_attr("IFLA_LINK"), up=bool(msg["flags"] & 1))

    def link(self, dev: Dev) -> Link | None:
        if isinstance(dev, str):
            self._index.pop(dev, None)
        try:
            key = {"index": dev} if isinstance(dev, int) else {"ifname": dev}
            msgs = _wrap(self._ipr.link, "get", **key)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        if not msgs:
            return None
        link = self._link(msgs[0])
        self._index[link.name] = link.index
        return link

    def index(self, dev: Dev) -> int:
        """An interface's index (names are remembered: these objects live for one short task)."""
        if isinstance(dev, int):
            return dev
        if dev in self._index:
            return self._index[dev]
        if self._local:
            try:
                return socket.if_nametoindex(dev)
            except OSError:
                raise NetlinkError(errno.ENODEV, f"no interface {dev}") from None
        link = self.link(dev)
        if link is None:
            raise NetlinkError(errno.ENODEV, f"no interface {dev}")
        return link.index

    def name(self, index: int) -> str:
        if self._local:
            try:
                return socket.if_indextoname(index)
            except OSError:
                return ""
        link = self.link(index)
        return link.name if link else ""

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, peer_index: int | None = None) -> None:
        """Create a veth pair, up on this side: ``name`` here, ``peer`` directly inside another
        namespace (with index ``peer_index`` there, when given)."""
        spec: dict = {"ifname": peer, "net_ns_fd": peer_netns_fd}
        if peer_index is not None:
            spec["index"] = peer_index
        _wrap(self._ipr.link, "add", ifname=name, kind="veth", state="up", peer=spec)

    def add_bridged_veth(self, name: str, mac: str, bridge: Dev, peer: str, peer_mac: str,
                         peer_netns_fd: int) -> None:
        """Create a veth pair for a bridged VE interface: ``name`` here (MAC ``mac``, up, a port
        of ``bridge``), ``peer`` (MAC ``peer_mac``, down) directly inside another namespace."""
        _wrap(self._ipr.link, "add", ifname=name, kind="veth", address=mac, master=self.index(bridge), state="up",
              peer={"ifname": peer, "net_ns_fd": peer_netns_fd, "address": peer_mac})

    def add_ifb(self, name: str, txqlen: int = 1000) -> bool:
        """Create an ifb device (up), for shaping what arrives on another interface; False when
        it was there already. (The default queue of 32 packets loses too much of a TCP burst.)"""
        try:
            _wrap(self._ipr.link, "add", ifname=name, kind="ifb", txqlen=txqlen, state="up")
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                self.set_up(name)
                return False
            raise
        return True

    def delete_link(self, dev: Dev) -> bool:
        """Delete an interface (a veth takes its peer with it); False if it was not there."""
        if isinstance(dev, str):
            self._index.pop(dev, None)
        try:
            _wrap(self._ipr.link, "del", **({"index": dev} if isinstance(dev, int) else {"ifname": dev}))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def set_up(self, dev: Dev) -> None:
        _wrap(self._ipr.link, "set", index=self.index(dev), state="up")

    def set_down(self, dev: Dev) -> None:
        _wrap(self._ipr.link, "set", index=self.index(dev), state="down")

    def links(self) -> list[Link]:
        """Every interface of the namespace (a dump: not for a hot path)."""
        return [self._link(msg) for msg in _wrap(self._ipr.get_links)]

    def rename(self, dev: Dev, name: str) -> None:
        """Give an interface (down) another name."""
        index = self.index(dev)
        if isinstance(dev, str):
            self._index.pop(dev, None)
        _wrap(self._ipr.link, "set", index=index, ifname=name)

    def move_to_netns(self, dev: Dev, netns_fd: int) -> None:
        """Move an interface into the network namespace ``netns_fd`` refers to; it keeps its name."""
        index = self.index(dev)
        if isinstance(dev, str):
            self._index.pop(dev, None)
        _wrap(self._ipr.link, "set", index=index, net_ns_fd=netns_fd)

    # --- addresses ------------------------------------------------------------------------
    def add_address(self, dev: Dev, iface: Interface, exist_ok: bool = True) -> bool:
        """Add an address (without duplicate address detection: it is usable at once)."""
        try:
            _wrap(self._ipr.addr, "add", index=self.index(dev), address=str(iface.ip),
                  prefixlen=iface.network.prefixlen, flags=IFA_F_NODAD)
        except NetlinkError as e:
            if e.errno == errno.EEXIST and exist_ok:
                return False
            raise
        return True

    def global_addresses(self, dev: Dev) -> list[Interface]:
        """The addresses of global scope on one interface, with their prefix lengths."""
        out = []
        for msg in _wrap(self._ipr.get_addr, index=self.index(dev)):
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if msg["scope"] == RT_SCOPE_UNIVERSE and msg["family"] in (socket.AF_INET, socket.AF_INET6) and local:
                out.append(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
        return out

    def del_address(self, dev: Dev, iface: Interface) -> bool:
        try:
            _wrap(self._ipr.addr, "del", index=self.index(dev), address=str(iface.ip),
                  prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV, errno.ESRCH):
                return False
            raise
        return True

    # --- routes ---------------------------------------------------------------------------
    def lookup(self, addr: Address) -> Route | None:
        """The route the kernel has for ``addr`` (None when it has none at all)."""
        try:
            msgs = _wrap(self._ipr.route, "get", dst=str(addr), family=_family(addr), flags=RTM_F_FIB_MATCH)
        except NetlinkError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH, errno.ENOENT):
                return None
            raise
        if not msgs:
            return None
        msg = msgs[0]
        dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if addr.version == 4 else "::")
        gw = msg.get_attr("RTA_GATEWAY")
        return Route(dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False), type=msg["type"],
                     oif=msg.get_attr("RTA_OIF"), gateway=ipaddress.ip_address(gw) if gw else None)

    def routes(self, family: int, dev: Dev) -> list[tuple[Network, Address | None]]:
        """(destination, gateway) of the unicast routes of the main table through one interface."""
        oif = self.index(dev)
        out = []
        for msg in _wrap(self._ipr.get_routes, family=family, table=RT_TABLE_MAIN):
            if msg["type"] != RTN_UNICAST or msg.get_attr("RTA_OIF") != oif:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            gw = msg.get_attr("RTA_GATEWAY")
            out.append((ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False),
                        ipaddress.ip_address(gw) if gw else None))
        return out

    def add_route(self, dst: Network, dev: Dev, gateway: Address | None = None, onlink: bool = False,
                  exist_ok: bool = True, metric: int | None = None) -> bool:
        kwargs: dict = {"dst": str(dst), "oif": self.index(dev), "family": _family(dst),
                        "proto": RTPROT_STATIC}
        if metric is not None:
            kwargs["priority"] = metric
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        else:
            kwargs["scope"] = RT_SCOPE_LINK if dst.version == 4 else RT_SCOPE_UNIVERSE
        if onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        try:
            _wrap(self._ipr.route, "add", **kwargs)
        except NetlinkError as e:
            if e.errno == errno.EEXIST and exist_ok:
                return False
            raise
        return True

    def del_route(self, dst: Network, dev: Dev | None = None) -> bool:
        # scope "nowhere" matches a route of any scope, as `ip route del` does
        kwargs: dict = {"dst": str(dst), "family": _family(dst), "scope": RT_SCOPE_NOWHERE}
        try:
            if dev is not None:
                kwargs["oif"] = self.index(dev)
            _wrap(self._ipr.route, "del", **kwargs)
        except NetlinkError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    def has_default_route(self, family: int, dev: Dev) -> bool:
        return any(dst.prefixlen == 0 for dst, _gw in self.routes(family, dev))

    def static_routes(self, family: int, dev: Dev) -> list[StaticRoute]:
        """The unicast routes of the main table through one interface, but those the kernel made."""
        oif = self.index(dev)
        out = []
        for msg in _wrap(self._ipr.get_routes, family=family, table=RT_TABLE_MAIN):
            if msg["type"] != RTN_UNICAST or msg["proto"] == RTPROT_KERNEL or msg.get_attr("RTA_OIF") != oif:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            gw = msg.get_attr("RTA_GATEWAY")
            out.append(StaticRoute(dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False),
                                   gateway=ipaddress.ip_address(gw) if gw else None,
                                   onlink=bool(msg["flags"] & RTNH_F_ONLINK), metric=msg.get_attr("RTA_PRIORITY")))
        return out

    # --- proxy neighbours (proxy ARP / NDP for one address) -------------------------------
    def proxy_neighbours(self) -> list[tuple[Address, int]]:
        """(address, interface index) of every proxy ARP/NDP entry."""
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            # The kernel dumps proxy entries only when the request itself carries NTF_PROXY;
            # pyroute2 puts keyword arguments into the request when a dump_filter is given.
            for msg in _wrap(self._ipr.neigh, "dump", family=fam, flags=NTF_PROXY, dump_filter=lambda _m: True):
                dst = msg.get_attr("NDA_DST")
                if msg["flags"] & NTF_PROXY and dst:
                    out.append((ipaddress.ip_address(dst), msg["ifindex"]))
        return out

    def add_proxy_neighbour(self, addr: Address, dev: Dev) -> None:
        _wrap(self._ipr.neigh, "replace", dst=str(addr), ifindex=self.index(dev), flags=NTF_PROXY,
              family=_family(addr))

    def del_proxy_neighbour(self, addr: Address, dev: Dev) -> bool:
        try:
            _wrap(self._ipr.neigh, "del", dst=str(addr), ifindex=self.index(dev), flags=NTF_PROXY,
                  family=_family(addr))
        except NetlinkError as e:
            if e.errno in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                return False
            raise
        return True



def watch_deleted_links(on_deleted: Callable[[str, int, dict[str, int]], object], stop: threading.Event) -> None:
    """Call ``on_deleted(name, ifindex, stats)`` for every interface deleted in this network namespace until
    ``stop`` is set; ``stats`` are the kernel's last counters of it (IFLA_STATS64: rx_bytes, tx_bytes, ...),
    which the deletion message carries: the only record of them once the interface is gone.

    A plain netlink socket subscribed to link events, its messages decoded by pyroute2's ifinfmsg (pyroute2's
    own IPRoute delivers no events when it runs outside the main thread)."""
    import select
    import struct

    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    rtm_dellink, rtmgrp_link = 17, 1
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, rtmgrp_link))
        while not stop.is_set():
            ready, _, _ = select.select([sock], [], [], 1.0)
            if not ready:
                continue
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:  # ENOBUFS: events were lost while we were busy; keep watching
                if exc.errno == errno.ENOBUFS:
                    continue
                raise
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=LH", data, offset)
                if length < 16:
                    break
                if kind == rtm_dellink:
                    msg = ifinfmsg(data[offset:offset + length])
                    msg.decode()
                    stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
                    if stats:
                        on_deleted(msg.get_attr("IFLA_IFNAME") or "", int(msg["index"]), dict(stats))
                offset += (length + 3) & ~3
    finally:
        sock.close()
