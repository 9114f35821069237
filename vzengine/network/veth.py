"""Routed mode: each VE's veth pair, its addresses, routes, proxy ARP/NDP and port forwards.

Like OpenVZ's venet. ``eth0`` inside the VE's own network namespace, ``vz<tag><ctid>`` on the
host (naming.ifname). Inside, every address is a /32 or /128 on eth0 with a default route
through the host (HOST_IP on-link, and fe80::1); the host side carries HOST_IP/32, HOST_IP6/128
and fe80::1/64. The host routes to a VE exactly the addresses assigned to it, so there is no
shared layer 2. Where a VE's address lies in a subnet directly connected on a host interface,
the host answers ARP/NDP for it there (a proxy neighbour entry; proxy_ndp on for IPv6).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput, Unsupported
from ..firewall import PortForward, have_ipv6
from .addresses import Address, first_of, host_iface, host_net, parse_address, parse_forward
from .hostcheck import host_use, link_exists, listening, read_sysctl, write_sysctl
from .pool import NetSettings

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from contextlib import AbstractContextManager

    from ..firewall import Firewall
    from ..layout import Layout
    from ..netlink import Netlink
    from ..rollback import Rollback
    from ..veconf import VEConfig
    from .pool import Claims

VE_IFNAME = "eth0"
GATEWAY6 = ipaddress.IPv6Address("fe80::1")


class RoutedMixin:
    """NetworkFeature's routed veths (it provides ``settings``, ``ifname``, ``firewall``, ``claims``,
    ``addresses``, ``forwards``, ``_other_confs``, ``_netlock``, ``_open_netns``, traffic and netns)."""

    if TYPE_CHECKING:  # what NetworkFeature provides
        @property
        def layout(self) -> Layout: ...
        @property
        def firewall(self) -> Firewall: ...
        @property
        def claims(self) -> Claims: ...
        def settings(self) -> NetSettings: ...
        def ifname(self, ctid: int) -> str: ...
        def addresses(self, conf: VEConfig) -> list[Address]: ...
        def forwards(self, conf: VEConfig) -> list[PortForward]: ...
        def _other_confs(self, ctid: int) -> Iterator[tuple[int, dict[str, str]]]: ...
        def _netlock(self) -> AbstractContextManager[None]: ...
        def _open_netns(self, ctid: int) -> int | None: ...
        def _release_netns(self, ctid: int) -> None: ...
        def save_traffic(self, ctid: int) -> None: ...
        def _fold_runs(self, ctid: int) -> None: ...
        def _delete_ifb(self, ctid: int) -> None: ...

    # --- check and apply ------------------------------------------------------------------
    def _used_addresses(self, ctid: int) -> dict[Address, int]:
        """Addresses of the other VEs of this root, and those picked by a create still running."""
        used: dict[Address, int] = {}
        for other, values in self._other_confs(ctid):
            for text in values.get("IP_ADDRESS", "").split():
                with contextlib.suppress(ValueError):
                    used[ipaddress.ip_address(text)] = other
        for a, owner in self.claims.taken(ctid).items():
            used.setdefault(a, owner)
        return used

    def _host_conflicts(self, addrs: list[Address], ctid: int) -> None:
        """Refuse addresses the host itself has, or routes to an interface that is not this VE's
        (another engine root's VE, say: each root knows only its own VEs' addresses)."""
        if not addrs:
            return
        from ..netlink import Netlink

        with Netlink() as host:
            for a in addrs:
                why = host_use(host, a, self.ifname(ctid))
                if why:
                    raise InvalidInput(why)

    def _check_routed(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        """--ipadd, --ipdel, --portfwd, --portfwd-del: checked against the pool, this root and the host."""
        ipadd = [str(x) for x in params.get("ipadd") or []]
        ipdel = [str(x) for x in params.get("ipdel") or []]
        pfadd = [str(x) for x in params.get("portfwd") or []]
        pfdel = [str(x) for x in params.get("portfwd_del") or []]
        if not (ipadd or ipdel or pfadd or pfdel):
            return {}
        if creating and (ipdel or pfdel):
            raise InvalidInput("--ipdel and --portfwd-del change an existing VE; a new one has nothing to remove")
        ctid = conf.ctid
        s = self.settings()
        current = self.addresses(conf)

        if any(x.strip().lower() == "all" for x in ipdel):
            drop = list(current)
        else:
            drop = []
            for x in ipdel:
                a = parse_address(x)
                if a not in current:
                    raise InvalidInput(f"VE {ctid} has no address {a}")
                if a not in drop:
                    drop.append(a)
        kept = [a for a in current if a not in drop]

        add: list[Address] = []
        auto = {4: 0, 6: 0}
        for x in ipadd:
            key = x.strip().lower()
            if key in ("auto", "auto4"):
                auto[4] += 1
                continue
            if key == "auto6":
                auto[6] += 1
                continue
            a = parse_address(x)
            s.check_assignable(a)
            if a in kept:
                raise InvalidInput(f"VE {ctid} already has address {a}")
            if a in add:
                raise InvalidInput(f"address {a} is given twice")
            add.append(a)
        if (auto[6] or any(a.version == 6 for a in add)) and not have_ipv6():
            raise Unsupported("this host has IPv6 turned off, so VEs cannot have IPv6 addresses")
        if add or auto[4] or auto[6]:
            used = self._used_addresses(ctid)
            for a in add:
                if a in used:
                    raise InvalidInput(f"address {a} is in use by VE {used[a]}")
            for version, n in auto.items():
                if n and len(s.free(version, set(used) | set(kept) | set(add), n)) < n:
                    raise InvalidInput(f"no free IPv{version} address left in the pool ({s.describe(version)})")
            self._host_conflicts(add, ctid)

        current_pf = self.forwards(conf)
        if any(x.strip().lower() == "all" for x in pfdel):
            pf_drop = list(current_pf)
        else:
            pf_drop = []
            for x in pfdel:
                spec = parse_forward(x)
                match = [f for f in current_pf if f.proto == spec.proto and f.host_port == spec.host_port]
                if not match:
                    raise InvalidInput(f"VE {ctid} has no port forward {spec.proto}:{spec.host_port}")
                pf_drop += [f for f in match if f not in pf_drop]
        pf_kept = [f for f in current_pf if f not in pf_drop]
        pf_add: list[PortForward] = []
        if pfadd:
            taken = {(f.proto, f.host_port): other for other, values in self._other_confs(ctid)
                     for f in (parse_forward(v) for v in values.get("PORTFWD", "").split())}
            foreign = self.firewall.foreign_forwards()
            for x in pfadd:
                f = parse_forward(x)
                port = (f.proto, f.host_port)
                if any((g.proto, g.host_port) == port for g in pf_kept + pf_add):
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded to VE {ctid}")
                if port in taken:
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded to VE {taken[port]}")
                if port in foreign:
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded on this host "
                                       "(by another engine root or tool)")
                if listening(f.proto, f.host_port):
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is in use by a program on the host")
                pf_add.append(f)
        if pf_kept + pf_add and not (auto[4] or any(a.version == 4 for a in kept + add)):
            raise InvalidInput("port forwards need an IPv4 address on the VE: add one with --ipadd")
        return {"drop": drop, "add": add, "auto": auto, "pf_drop": pf_drop, "pf_add": pf_add}

    def _apply_routed(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        ctid = conf.ctid
        s = self.settings()
        old = self.addresses(conf)
        old_pf = self.forwards(conf)
        used = self._used_addresses(ctid)  # again, under the lock: another VE may have won
        for a in params["add"]:
            if a in used:
                raise InvalidInput(f"address {a} is in use by VE {used[a]}")
        new = [a for a in old if a not in params["drop"]] + params["add"]
        for version, n in params["auto"].items():
            if n:
                new += self._pick(s, version, set(used) | set(new), n, ctid)
        for a in new:
            if a not in old:
                self.claims.claim(a, ctid, rb)
        pf = [f for f in old_pf if f not in params["pf_drop"]] + params["pf_add"]
        conf.set_list("IP_ADDRESS", [str(a) for a in new])
        conf.set_list("PORTFWD", [str(f) for f in pf])
        if not running:
            return
        nsfd = self._open_netns(ctid)
        if nsfd is None:
            return  # it stopped meanwhile: the next start applies the config
        added = [a for a in new if a not in old]
        rb.add(f"restore the network of VE {ctid}", lambda: self._undo_live(ctid, old, old_pf, added))
        try:
            firsts_changed = any(first_of(new, v) != first_of(old, v) for v in (4, 6))
            self._sync(ctid, new, pf, nsfd, drop=[a for a in old if a not in new], added=added,
                       pf_changed=pf != old_pf or firsts_changed)
        finally:
            os.close(nsfd)

    def _pick(self, s: NetSettings, version: int, taken: set, count: int, ctid: int) -> list[Address]:
        """The next free addresses of the pool: not taken here, and not in use on the host either
        (another engine root may use the same range)."""
        from ..netlink import Netlink

        picked: list[Address] = []
        with Netlink() as host:
            for addr in s.candidates(version, taken):
                if host_use(host, addr, self.ifname(ctid)):
                    continue  # another root's VE, or the host's own
                picked.append(addr)
                if len(picked) == count:
                    return picked
        raise InvalidInput(f"no free IPv{version} address left in the pool ({s.describe(version)})")

    def _undo_live(self, ctid: int, addrs: list[Address], pf: list[PortForward], added: list[Address]) -> None:
        with self._netlock():
            nsfd = self._open_netns(ctid)
            if nsfd is None:
                return
            try:
                self._sync(ctid, addrs, pf, nsfd, drop=added, added=[a for a in addrs if a not in added],
                           pf_changed=True)
            finally:
                os.close(nsfd)

    # --- host plumbing --------------------------------------------------------------------
    @property
    def _stamp(self) -> Path:
        return self.layout.rundir / "net-firewall"

    def _ensure_host(self, versions: set[int]) -> None:
        """Forwarding on, and this root's firewall chains in place (once per host boot)."""
        s = self.settings()
        if 4 in versions and read_sysctl("/proc/sys/net/ipv4/ip_forward") != "1":
            write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        if 6 in versions and read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding") != "1":
            # A router ignores router advertisements unless accept_ra is 2: keep the host's own
            # IPv6 default route on interfaces that take it from RAs.
            for conf_dir in Path("/proc/sys/net/ipv6/conf").iterdir():
                if conf_dir.name not in ("all", "default") and read_sysctl(str(conf_dir / "accept_ra")) == "1":
                    with contextlib.suppress(OSError):
                        write_sysctl(str(conf_dir / "accept_ra"), "2")
            write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        families = [4, 6] if have_ipv6() else [4]
        bridged = {4: read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
                   6: read_sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1"}
        want = " ".join([read_sysctl("/proc/sys/kernel/random/boot_id"), *map(str, s.pools4), *map(str, s.pools6),
                         str(s.nat), "in", *(f"{p}:{n}" for p, n in s.host_ports), str(bridged)])
        try:
            if self._stamp.read_text() == want:
                return
        except OSError:
            pass
        fw = self.firewall
        for family in families:
            fw.ensure_root(family, s.pools(family), s.nat, s.host_ports, bridged[family])
        self._stamp.write_text(want)

    def _sync(self, ctid: int, addrs: list[Address], forwards: list[PortForward], nsfd: int,
              drop: Sequence[Address] = (), added: list[Address] | None = None, pf_changed: bool = False,
              fresh: bool = False) -> None:
        """Make a running VE's network match ``addrs`` and ``forwards`` (the network lock is held).

        ``drop`` are addresses to take away and ``added`` the new ones (None: all of ``addrs``
        may be new); ``fresh`` says the VE has just started, so nothing of its network exists.
        """
        from ..netlink import Netlink

        s = self.settings()
        dev = self.ifname(ctid)
        v4 = [a for a in addrs if a.version == 4]
        v6 = [a for a in addrs if a.version == 6]
        if not addrs:
            self._teardown(ctid, list(drop), pf_changed, locked=True)
            return
        if (v4 and s.host_ip is None) or (v6 and s.host_ip6 is None):
            raise InvalidInput("vz.conf has no IP pool for this address family, so no HOST_IP for the VEs' links")
        self._ensure_host({a.version for a in addrs})
        with Netlink() as host, Netlink.of_netns(nsfd) as ve:
            link = None if fresh and not link_exists(dev) else host.link(dev)
            eth = None if link is None else ve.link(VE_IFNAME)
            if link is not None and (eth is None or eth.peer_index != link.index or link.peer_index != eth.index):
                self.save_traffic(ctid)
                host.delete_link(dev)  # left over from a namespace that is gone or going
                link = None
            new_pair = link is None
            if link is None:
                host_index, eth0 = self._new_pair(host, ve, dev, nsfd)
                write_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter", "1")
                self._fold_runs(ctid)  # the runs before this one have ended
            else:
                assert link.peer_index is not None, "a pair that passed the check above: its peer is eth0"
                host_index, eth0 = link.index, link.peer_index  # eth0's index inside the VE
                host.set_up(host_index)
                if read_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/route_localnet") == "1":
                    # an older engine sent the host's 127.0.0.1:port into the VE: never again
                    write_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/route_localnet", "0")
            if v4:
                assert s.host_ip is not None, "checked above"
                host.add_address(host_index, host_iface(s.host_ip))
            if v6:
                assert s.host_ip6 is not None, "checked above"
                host.add_address(host_index, host_iface(s.host_ip6))
                # The veth's own link-local address is tentative for a second or two (DAD), and
                # until then the host sends no neighbour solicitation on it: fe80::1 is usable
                # at once, and it is the VE's IPv6 gateway.
                host.add_address(host_index, ipaddress.ip_interface(f"{GATEWAY6}/64"))
            for a in drop:
                host.del_route(host_net(a), host_index)
                self._unproxy(host, a)
            for a in (addrs if new_pair or added is None else added):
                self._route_to_ve(host, a, host_index)

            ve.set_up(1)  # lo
            ve.set_up(eth0)
            for a in drop:
                ve.del_address(eth0, host_iface(a))
            for a in (addrs if new_pair or added is None else added):
                ve.add_address(eth0, host_iface(a))
            for version, mine, gateway in ((4, v4, s.host_ip), (6, v6, GATEWAY6)):
                af = socket.AF_INET if version == 4 else socket.AF_INET6
                default = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
                has_default = False if new_pair else ve.has_default_route(af, eth0)
                if mine and not has_default:
                    ve.add_route(default, eth0, gateway=gateway, onlink=version == 4)
                elif not mine and has_default:
                    ve.del_route(default, eth0)
        if pf_changed or forwards:
            # IPv4 forwards go to the first IPv4 address; the same ports of the host's IPv6
            # addresses go to the first IPv6 address, when the VE has one.
            for family, dest in ((4, v4[0] if v4 else None), (6, v6[0] if v6 else None)):
                rules = forwards if dest is not None and v4 else []
                if not self.firewall.set_port_forwards(ctid, dest, rules, family):
                    self._stamp.unlink(missing_ok=True)  # the root's chains are gone: make them again
                    self._ensure_host({a.version for a in addrs})
                    self.firewall.set_port_forwards(ctid, dest, rules, family)

    @staticmethod
    def _new_pair(host: Netlink, ve: Netlink, dev: str, nsfd: int) -> tuple[int, int]:
        """Create the VE's veth pair; return the indexes of its host side and of eth0 inside."""
        from ..netlink import NetlinkError

        try:
            # A fresh namespace has only lo (1): asking for index 2 saves looking eth0 up.
            host.add_veth(dev, VE_IFNAME, nsfd, peer_index=2)
        except NetlinkError as e:
            if e.errno not in (errno.EEXIST, errno.EBUSY):
                raise
            # index 2 is taken, or there is an eth0 the VE's root made itself (or a half-made pair)
            with contextlib.suppress(NetlinkError):
                ve.delete_link(VE_IFNAME)
            host.add_veth(dev, VE_IFNAME, nsfd)
            link = host.link(dev)
            assert link is not None and link.peer_index is not None, "the veth pair has just been made"
            return link.index, link.peer_index
        return host.index(dev), 2

    def _route_to_ve(self, host: Netlink, addr: Address, index: int) -> None:
        """Route ``addr`` into the VE; answer ARP/NDP for it where it belongs to a host subnet."""
        from ..netlink import NetlinkError

        before = host.lookup(addr)  # what the host would do with it without the VE
        why = host_use(host, addr, host.name(index), before)
        if why:
            raise InvalidInput(why)
        try:
            host.add_route(host_net(addr), index, exist_ok=before is not None and before.oif == index)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:  # someone else's route for it appeared meanwhile
                raise InvalidInput(f"{addr} is already in use on this host (it has a route for it)") from None
            raise
        if before is not None and before.connected and before.oif is not None and before.oif != index:
            uplink = host.name(before.oif)
            if uplink and not uplink.startswith("vz"):
                if addr.version == 6:
                    write_sysctl(f"/proc/sys/net/ipv6/conf/{uplink}/proxy_ndp", "1")
                host.add_proxy_neighbour(addr, before.oif)

    @staticmethod
    def _unproxy(host: Netlink, addr: Address) -> None:
        """Stop answering ARP/NDP for ``addr`` (its route into the VE is gone already)."""
        route = host.lookup(addr)
        if route is not None and route.connected and route.oif is not None:  # (connected implies an oif)
            host.del_proxy_neighbour(addr, route.oif)

    def _teardown(self, ctid: int, addrs: list[Address], forwards: bool, locked: bool = False) -> None:
        """Remove the VE's veth (its routes go with it), proxy entries and port forwards."""
        lock = contextlib.nullcontext() if locked else self._netlock()
        with lock:
            dev = self.ifname(ctid)
            if link_exists(dev) or addrs:
                from ..netlink import Netlink

                self.save_traffic(ctid)
                self._release_netns(ctid)
                with Netlink() as host:
                    host.delete_link(dev)
                    if addrs:
                        for a, index in host.proxy_neighbours():
                            if a in addrs:
                                host.del_proxy_neighbour(a, index)
            if forwards:
                for family in (4, 6):
                    self.firewall.set_port_forwards(ctid, None, [], family)
            if (addrs or forwards) and self._stamp.exists():
                for family in ([4, 6] if have_ipv6() else [4]):
                    self.firewall.set_conntrack_cap(ctid, dev, None, family, running=False)
            self._delete_ifb(ctid)
            self._fold_runs(ctid)
