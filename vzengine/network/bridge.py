"""Bridged mode (``--netif_add eth1,,,,br0``, OpenVZ's veth devices), for layer 2.

A second veth pair per interface: ``eth1`` (any name but eth0 and lo) inside, with a MAC made
when it is added (02:..., kept in NETIF, so DHCP and ARP see the same VE at every start), and
``vz<tag><letter><ctid in base 36>`` on the host (naming.netif_host_name; MAC fe:..., so it never
becomes the bridge's own MAC), a port of an existing bridge. The engine brings eth1 up without
addresses: the VE configures it itself, and the engine neither routes nor filters it (no
anti-spoofing). Up to MAX_NETIFS per VE; created at start, after a reboot inside the VE and live
by ``vzctl set``; deleted on stop, destroy and purge.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from .addresses import NetIf, format_netifs, parse_ifname, parse_mac, parse_netifs, random_mac
from .hostcheck import is_bridge, link_exists
from .naming import MAX_NETIFS, netif_host_name
from .veth import VE_IFNAME

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from ..layout import Layout
    from ..rollback import Rollback
    from ..veconf import VEConfig


class BridgedMixin:
    """NetworkFeature's bridged interfaces (it provides ``layout``, ``_other_confs``, ``_netlock``, ``_open_netns``)."""

    if TYPE_CHECKING:  # what NetworkFeature provides
        @property
        def layout(self) -> Layout: ...
        @property
        def ifprefix(self) -> str: ...
        def _other_confs(self, ctid: int) -> Iterator[tuple[int, dict[str, str]]]: ...
        def _netlock(self) -> AbstractContextManager[None]: ...
        def _open_netns(self, ctid: int) -> int | None: ...

    @staticmethod
    def netifs(conf: VEConfig) -> list[NetIf]:
        return parse_netifs(conf.get("NETIF"))

    @staticmethod
    def _set_netifs(conf: VEConfig, netifs: list[NetIf]) -> None:
        conf.set("NETIF", format_netifs(netifs))

    def _check_netifs(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        """--netif_add NAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE] (--bridge BRIDGE for those without
        one) and --netif_del NAME|all: bridged interfaces, OpenVZ's veth devices."""
        specs = [str(x) for x in params.get("netif_add") or []]
        names_del = [str(x) for x in params.get("netif_del") or []]
        bridge_opt = params.get("bridge")
        if not (specs or names_del or bridge_opt):
            return {}
        if bridge_opt and not specs:
            raise InvalidInput("--bridge names the bridge of the interfaces --netif_add adds: give --netif_add too")
        if creating and names_del:
            raise InvalidInput("--netif_del changes an existing VE; a new one has nothing to remove")
        ctid = conf.ctid
        current = self.netifs(conf)
        if any(x.strip().lower() == "all" for x in names_del):
            drop = [n.ifname for n in current]
        else:
            drop = []
            for x in names_del:
                name = parse_ifname(x, "interface name")
                if name not in (n.ifname for n in current):
                    raise InvalidInput(f"VE {ctid} has no bridged interface {name}")
                if name not in drop:
                    drop.append(name)
        kept = [n for n in current if n.ifname not in drop]
        if len(kept) + len(specs) > MAX_NETIFS:
            raise InvalidInput(f"a VE can have {MAX_NETIFS} bridged interfaces at most")
        others: dict[str, int] = {}  # MACs of this root's other VEs
        for other, values in self._other_confs(ctid):
            for n in parse_netifs(values.get("NETIF", "")):
                others[n.mac] = others[n.host_mac] = other
        macs = {m for n in kept for m in (n.mac, n.host_mac)}
        slots = {n.host_ifname for n in kept}
        add: list[NetIf] = []
        for spec in specs:
            fields = spec.split(",")
            if len(fields) > 5:
                raise InvalidInput(f"invalid interface {spec!r}: use NAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE]")
            fields += [""] * (5 - len(fields))
            name = parse_ifname(fields[0], "interface name")
            if name == VE_IFNAME:
                raise InvalidInput(f"{VE_IFNAME} is the VE's routed interface (--ipadd): give the bridged one "
                                   "another name, e.g. eth1")
            if name == "lo":
                raise InvalidInput("lo is the VE's loopback interface: give the bridged one another name, e.g. eth1")
            if name in (n.ifname for n in kept + add):
                raise InvalidInput(f"VE {ctid} already has an interface {name}" if name in (n.ifname for n in kept)
                                   else f"interface {name} is given twice")
            if fields[2].strip():
                raise InvalidInput(f"invalid interface {spec!r}: the engine names the host side itself "
                                   f"({self.ifprefix}...), so leave HOST_IFNAME empty, e.g. {name},,,,br0")
            bridge = fields[4].strip() or (str(bridge_opt).strip() if bridge_opt else "")
            if not bridge:
                raise InvalidInput(f"interface {name} needs a bridge: --netif_add {name},,,,BRIDGE or --bridge BRIDGE")
            bridge = parse_ifname(bridge, "bridge name")
            if not link_exists(bridge):
                raise InvalidInput(f"bridge {bridge} does not exist on this host")
            if not is_bridge(bridge):
                raise InvalidInput(f"{bridge} is not a bridge (a network interface of another kind)")
            pair = []
            for value, first, what in ((fields[1], 0x02, "MAC address"), (fields[3], 0xFE, "host MAC address")):
                if value.strip():
                    mac = parse_mac(value, what)
                    if mac in others:
                        raise InvalidInput(f"MAC address {mac} is in use by VE {others[mac]}")
                    if mac in macs:
                        raise InvalidInput(f"MAC address {mac} is given twice (or is in use by this VE)")
                else:
                    mac = random_mac(first, macs | set(others))
                macs.add(mac)
                pair.append(mac)
            slot = next(i for i in range(MAX_NETIFS) if netif_host_name(self.layout.tag, ctid, i) not in slots)
            host_name = netif_host_name(self.layout.tag, ctid, slot)
            slots.add(host_name)
            add.append(NetIf(name, pair[0], host_name, pair[1], bridge))
        return {"netif_drop": drop, "netif_add": add}

    def _apply_netifs(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        """Store the VE's bridged interfaces; on a running VE, add and remove them live."""
        ctid = conf.ctid
        old = self.netifs(conf)
        dropped = [n for n in old if n.ifname in params["netif_drop"]]
        added: list[NetIf] = params["netif_add"]
        self._set_netifs(conf, [n for n in old if n not in dropped] + added)
        if not running or not (dropped or added):
            return
        nsfd = self._open_netns(ctid)
        if nsfd is None:
            return  # it stopped meanwhile: the next start applies the config
        try:
            self._remove_netifs(dropped)
            rb.add(f"give VE {ctid} back its bridged interfaces", lambda: self._undo_netifs(ctid, dropped))
            rb.add(f"remove VE {ctid}'s new bridged interfaces", lambda: self._remove_netifs(added))
            self._add_netifs(ctid, added, nsfd)
        finally:
            os.close(nsfd)

    def _undo_netifs(self, ctid: int, netifs: list[NetIf]) -> None:
        with self._netlock():
            nsfd = self._open_netns(ctid)
            if nsfd is None:
                return
            try:
                self._add_netifs(ctid, netifs, nsfd)
            finally:
                os.close(nsfd)

    def _add_netifs(self, ctid: int, netifs: list[NetIf], nsfd: int) -> None:
        """Create bridged interfaces in the VE's namespace ``nsfd``, up, without addresses (the
        VE configures those itself). A host side left from a namespace that is gone is replaced."""
        if not netifs:
            return
        from ..netlink import Netlink, NetlinkError

        with Netlink() as host, Netlink.of_netns(nsfd) as ve:
            for n in netifs:
                if not is_bridge(n.bridge):
                    raise InvalidInput(f"bridge {n.bridge} of VE {ctid}'s interface {n.ifname} does not exist "
                                       "on this host")
                host.delete_link(n.host_ifname)
                try:
                    host.add_bridged_veth(n.host_ifname, n.host_mac, n.bridge, n.ifname, n.mac, nsfd)
                except NetlinkError as e:
                    if e.errno == errno.EEXIST and ve.link(n.ifname) is not None:
                        raise InvalidInput(f"VE {ctid} already has an interface {n.ifname} of its own: remove "
                                           "it inside the VE or give the bridged one another name") from None
                    raise
                ve.set_up(n.ifname)

    @staticmethod
    def _remove_netifs(netifs: list[NetIf]) -> None:
        """Delete bridged interfaces (the host side takes the VE's side with it)."""
        ours = [n.host_ifname for n in netifs if link_exists(n.host_ifname)]
        if not ours:
            return
        from ..netlink import Netlink

        with Netlink() as host:
            for name in ours:
                host.delete_link(name)
