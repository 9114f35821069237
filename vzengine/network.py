"""VE networking (issue 3): routed veth pairs, addresses, NAT and port forwards via pyroute2.

Routed mode, like OpenVZ's venet. Each VE with an address gets a veth pair: ``eth0`` inside its
own network namespace (LXC gives it one with only ``lo``: ``lxc.net.0.type = empty``), and
``vz<tag><ctid>`` on the host. Inside, every address is a /32 or /128 on eth0 with a default
route through the host (``HOST_IP`` on-link, and fe80::1); the host side carries HOST_IP/32,
HOST_IP6/128 and fe80::1/64, so VEs reach the host at those addresses. The host routes to a VE
exactly the addresses assigned to it (a /32 or /128 route through its veth); there is no shared
layer 2, so one VE never sees another's traffic. Anti-spoofing is one rule per root and family
(raw table, ``-m rpfilter --invert -j DROP`` for packets from the root's veths): a VE may only
send from an address the host routes back to that same VE, so an address a VE's root adds on
its own neither sends nor receives anything. IPv4 rp_filter on the veth says the same again.

Where a VE's address lies in a subnet that is directly connected on a host interface (public
addresses from the host's LAN), the host answers ARP/NDP for it there (a proxy neighbour entry,
and proxy_ndp on for IPv6 on that interface).

Settings in the root's vz.conf (or $VZ_<NAME>): IP_POOL (IPv4 networks VE addresses come from,
separated by spaces), IP6_POOL, HOST_IP and HOST_IP6 (the host's address on every VE's link;
default the first address of the first pool), NAT (masquerade the private part of the pools
when they leave the host). Per VE (its conf): IP_ADDRESS, PORTFWD ("tcp:2201:22 ...") and NETIF.

Port forwards go from the host's addresses to the VE's first IPv4 address (iptables), and the
same ports of the host's IPv6 addresses to its first IPv6 address when it has one (ip6tables).
They answer on the host's real addresses only: 127.0.0.1:port and [::1]:port stay the host's own
(no route_localnet), so a forward never shadows a service the host keeps on its loopback.

The host is not a service to its VEs (firewall.py, VZ-T-IN): whatever a VE sends to any address
of the host itself is rejected, but replies to connections the host opened, pings, ICMPv6
neighbour discovery, and the ports vz.conf's HOST_PORTS opens on purpose ("udp:53 tcp:53" for a
resolver the host runs for its VEs; none by default: the engine serves its VEs nothing). A
server on the host bound to 0.0.0.0 or [::] (sshd, the panel) is therefore out of the VEs'
reach. Port forwards, VE to VE and VE to the outside are forwarded traffic and unaffected.

Fairness. ``--rate`` (RATE in the VE's conf, kbit/s; vz.conf RATE is the default for VEs without
one, none by default) limits the VE's traffic both ways: HTB on each of its host-side interfaces
for what it receives, and their ingress redirected to one ifb of its own (``vz<tag>z<ctid in base
36>``) for what it sends, shared by all its interfaces (tc.py). ``--conntrack`` (CONNTRACK_MAX,
vz.conf default 4096) caps the connections the VE opens through the host (a connlimit rule on
its routed veth, each address family on its own), so one VE's flood cannot fill the host's
connection-tracking table; beyond it new connections are rejected. Both are applied at start, after
a reboot inside the VE, and live by ``vzctl set``.

Bridged mode (``--netif_add eth1,,,,br0``, OpenVZ's veth devices), for layer 2: a second veth
pair per interface, ``eth1`` (any name but eth0 and lo) inside with a MAC generated when it is
added (02:..., locally administered; kept in NETIF, so DHCP and ARP see the same VE at every
start), and ``vz<tag><letter><ctid in base 36>`` on the host (MAC fe:..., so it never becomes the
bridge's own MAC), a port of an existing bridge. The engine brings eth1 up without addresses:
the VE configures it itself (``ip addr add``, DHCP), and the engine neither routes nor filters
it, so a bridged interface has no anti-spoofing: the VE can use any address or MAC on the LAN.
What it sends to the host is rejected like the routed side's only where br_netfilter passes
bridged frames to iptables (bridge-nf-call-iptables = 1); otherwise the host answers a bridged
VE as it answers any machine on that LAN (the engine does not load br_netfilter: it would send
every bridge of the host through iptables). Its conntrack entries are not capped.
Up to MAX_NETIFS per VE; created at start (after eth0), after a reboot inside the VE (the same
hook) and live by ``vzctl set``; gone with the VE's namespace, and deleted by the engine on
stop, destroy and purge (their names start with the root's prefix). A clone or a restore under
another id gets no NETIF (like IP_ADDRESS): give it ``--netif_add`` for interfaces of its own.
Its traffic is not counted in the totals below.

Addresses are applied after start (by the engine, in ``after_start``) and after a reboot inside
the VE: LXC then restarts the VE in a new network namespace without asking the engine, so the
VE's LXC config carries an ``lxc.hook.start-host`` hook, a shell script that exits at once when
the engine itself is starting the VE (about 1 ms) and otherwise calls ``vzctl net-hook``, which
sets the network up before the VE's init runs (in the background instead when another engine
operation, a backup say, holds the VE: the hook never waits for it).

All host changes of a root happen under one lock (<root>/locks/network.lock), so address
allocation from the pool, routes and firewall chains never race between VEs.

Each root knows only its own VEs' addresses, and several roots may share a pool (the default
one, say). So before anything changes, an address is also checked against the host itself
(``host_use``): one the host has on an interface of its own, or routes by a /32 or /128 route to
an interface that is not this VE's veth (another root's VE, or any other tool's), is refused
("10.77.0.11 is already in use on this host (routed to vzab12c101)"); ``--ipadd auto`` skips
those, and a start refuses them too (an address another root took while this VE was stopped).
A stopped VE of another root has no route, so its addresses cannot be seen: give roots on one
host pools of their own.

Traffic totals: the veth's counters start at zero with every veth (each start, a reboot inside
the VE, a resume), so each VE also has <root>/traffic/<ctid>/, where the runs that ended are
kept and ``usage`` adds them to the current one (net_in_bytes ... net_out_packets; see
``totals``). The VE's LXC config carries an ``lxc.hook.stop`` shell script that LXC runs while
it still holds the VE's network namespace, so it reads the veth's final counts; the engine
saves them too before it deletes a veth itself, and holds the namespace of a VE CRIU restored
(whose monitor keeps no handle on it) until they are read.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cgroups
from .errors import Busy, InvalidInput, StateError, Unsupported, VZError
from .features import Feature
from .firewall import Firewall, PortForward, have_ipv6
from .layout import read_kv
from .lock import flock_within

if TYPE_CHECKING:
    from .rollback import Rollback
    from .veconf import VEConfig

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NET_DEFAULTS = {
    "IP_POOL": "10.77.0.0/24",
    "IP6_POOL": "fd77::/64",
    "HOST_IP": "",  # default: the first address of the first IPv4 pool
    "HOST_IP6": "",  # default: the first address of the first IPv6 pool
    "NAT": "yes",
    "HOST_PORTS": "",  # "udp:53 tcp:53": ports of the host its VEs may reach (none by default)
    "RATE": "",  # the --rate of VEs without their own (none: no limit)
    "CONNTRACK_MAX": "4096",  # the --conntrack of VEs without their own
}
RATE_MAX_KBIT = 100_000_000  # 100 Gbit/s
CONNTRACK_RANGE = (16, 10_000_000)
UNLIMITED = ("unlimited", "none", "max")
VE_IFNAME = "eth0"
GATEWAY6 = ipaddress.IPv6Address("fe80::1")
CLAIM_SECONDS = 120  # how long an address picked by a create/set still in progress stays taken
LOCK_WAIT = 60.0
RTPROT_STATIC = 4
COUNTERS = ("traffic_in_bytes", "traffic_in_packets", "traffic_out_bytes", "traffic_out_packets")
TOTALS = ("net_in_bytes", "net_in_packets", "net_out_bytes", "net_out_packets")  # Engine.usage keys
# A VE's host-side veth sends what the VE receives: (in bytes, in packets, out bytes, out packets).
VETH_STATS = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")


# --- parsing ---------------------------------------------------------------------------------

def parse_address(value: str) -> Address:
    """A VE address: one IPv4 or IPv6 host address (an optional /32 or /128 is accepted)."""
    s = str(value).strip()
    host, sep, plen = s.partition("/")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"invalid IP address {value!r}") from None
    if sep and plen != str(addr.max_prefixlen):
        raise InvalidInput(f"invalid IP address {value!r}: give a single address (/{addr.max_prefixlen} at most)")
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local or (
            addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        raise InvalidInput(f"invalid IP address {value!r}: not usable as a VE address")
    return addr


def parse_forward(value: str) -> PortForward:
    """PROTO:HOSTPORT:VEPORT (PROTO tcp or udp; VEPORT defaults to HOSTPORT)."""
    parts = str(value).strip().lower().split(":")
    if len(parts) == 2:
        parts.append(parts[1])
    if len(parts) != 3 or parts[0] not in ("tcp", "udp"):
        raise InvalidInput(f"invalid port forward {value!r}: use tcp:HOSTPORT:VEPORT or udp:HOSTPORT:VEPORT")
    ports = []
    for p in parts[1:]:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise InvalidInput(f"invalid port forward {value!r}: ports are numbers from 1 to 65535")
        ports.append(int(p))
    return PortForward(parts[0], ports[0], ports[1])


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(k|kbit|m|mbit|g|gbit)?(?:/s)?$", re.IGNORECASE)


def parse_rate(value, what: str = "--rate") -> int | None:
    """A bandwidth in kbit/s: a plain number is kbit/s (as in OpenVZ), or 512K, 10M, 1.5G
    (kbit, mbit, gbit); unlimited (or 0) for none."""
    s = str(value).strip()
    if s.lower() in UNLIMITED or s == "0":
        return None
    m = _RATE.match(s)
    if not m:
        raise InvalidInput(f"invalid {what} {value!r}: use kbit/s, or a number with K, M or G (bit/s), e.g. 10M")
    kbit = float(m.group(1)) * {"": 1, "k": 1, "m": 1000, "g": 1_000_000}[(m.group(2) or "")[:1].lower()]
    if not 8 <= kbit <= RATE_MAX_KBIT:
        raise InvalidInput(f"invalid {what} {value!r}: use 8 kbit/s to 100G")
    return int(kbit)


def parse_conntrack(value, what: str = "--conntrack") -> int | None:
    """A number of tracked connections, or unlimited."""
    s = str(value).strip()
    if s.lower() in UNLIMITED:
        return None
    lo, hi = CONNTRACK_RANGE
    if not s.isdigit() or not lo <= int(s) <= hi:
        raise InvalidInput(f"invalid {what} {value!r}: use a whole number from {lo} to {hi}, or unlimited")
    return int(s)


def human_rate(kbit: int | None) -> str:
    if kbit is None:
        return "-"
    for unit, n in (("G", 1_000_000), ("M", 1000)):
        if kbit >= n and kbit % (n // 10) == 0:
            return f"{kbit / n:g}{unit}"
    return f"{kbit}K"


def ifname(tag: str, ctid: int) -> str:
    """The host-side veth of a VE: vz<tag><ctid>, at most 15 characters (long ids in base 36)."""
    name = f"vz{tag}{ctid}"
    if len(name) <= 15:
        return name
    digits, n = "", ctid
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"vz{tag}x{digits}"  # decimal names never contain an 'x'


def ifb_name(tag: str, ctid: int) -> str:
    """The ifb that shapes what a VE sends (``--rate``): vz<tag>z<ctid in base 36>."""
    digits, n = "", ctid
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"vz{tag}z{digits or '0'}"


def _iface(addr: Address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{addr}/{addr.max_prefixlen}")


def _host_net(addr: Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


# --- bridged interfaces (--netif_add) ----------------------------------------------------------

MAX_NETIFS = 8
NETIF_SLOTS = "ghijuvwy"  # the letter after the tag in a bridged host-side name (see netif_host_name)
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NetIf:
    """A bridged VE interface (NETIF in the VE's conf, OpenVZ's veth devices): ``ifname`` with
    MAC ``mac`` inside the VE, its peer ``host_ifname`` (MAC ``host_mac``) a port of ``bridge``."""

    ifname: str
    mac: str
    host_ifname: str
    host_mac: str
    bridge: str

    def __str__(self) -> str:
        return (f"ifname={self.ifname},mac={self.mac},host_ifname={self.host_ifname},host_mac={self.host_mac},"
                f"bridge={self.bridge}")

    @classmethod
    def parse(cls, item: str) -> NetIf | None:
        """One entry of NETIF (``ifname=eth1,mac=...,host_ifname=...,host_mac=...,bridge=br0``)."""
        kv = dict(part.partition("=")[::2] for part in item.strip().split(",") if "=" in part)
        try:
            return cls(kv["ifname"], kv["mac"], kv["host_ifname"], kv["host_mac"], kv["bridge"])
        except KeyError:
            return None

    def to_dict(self) -> dict:
        return {"ifname": self.ifname, "mac": self.mac, "host_ifname": self.host_ifname,
                "host_mac": self.host_mac, "bridge": self.bridge}


def parse_ifname(value: str, what: str) -> str:
    name = str(value).strip()
    if not _IFNAME.match(name):
        raise InvalidInput(f"invalid {what} {value!r}: a letter, then letters, digits, '.', '-' or '_' "
                           "(15 characters at most)")
    return name


def parse_mac(value: str, what: str = "MAC address") -> str:
    """A unicast MAC address, as aa:bb:cc:dd:ee:ff."""
    s = str(value).strip().lower()
    if not _MAC.match(s):
        raise InvalidInput(f"invalid {what} {value!r}: use six hex bytes, e.g. 02:00:0a:00:00:01")
    mac = s.replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise InvalidInput(f"invalid {what} {value!r}: a multicast address (the first byte is odd)")
    if mac == "00:00:00:00:00:00":
        raise InvalidInput(f"invalid {what} {value!r}: all zeros")
    return mac


def random_mac(first: int, avoid: set[str]) -> str:
    """A random MAC whose first byte is ``first`` (0x02 or 0xfe: locally administered, unicast)."""
    while True:
        mac = ":".join(f"{b:02x}" for b in (first, *secrets.token_bytes(5)))
        if mac not in avoid:
            return mac


def netif_host_name(tag: str, ctid: int, slot: int) -> str:
    """The host side of a VE's bridged interface: vz<tag><slot letter><ctid in base 36>.

    At most 15 characters, and never one of the routed veth's names (digits or 'x' after the
    tag) nor of the names checkpoint.py parks links under ('k' to 't')."""
    digits, n = "", ctid
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"vz{tag}{NETIF_SLOTS[slot]}{digits or '0'}"


def is_bridge(name: str) -> bool:
    return Path("/sys/class/net", name, "bridge").is_dir()


@dataclass(frozen=True)
class NetSettings:
    pools4: tuple[ipaddress.IPv4Network, ...]
    pools6: tuple[ipaddress.IPv6Network, ...]
    host_ip: ipaddress.IPv4Address | None
    host_ip6: ipaddress.IPv6Address | None
    nat: bool
    host_ports: tuple[tuple[str, int], ...] = ()
    rate: int | None = None  # kbit/s, for VEs without RATE of their own
    conntrack_max: int | None = 4096

    @classmethod
    def load(cls, settings: dict[str, str]) -> NetSettings:
        def get(key: str) -> str:
            return os.environ.get(f"VZ_{key}") or settings.get(key) or NET_DEFAULTS[key]

        pools: dict[int, list] = {4: [], 6: []}
        for key, version in (("IP_POOL", 4), ("IP6_POOL", 6)):
            for item in get(key).replace(",", " ").split():
                try:
                    net = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise InvalidInput(f"{key}={get(key)!r} in vz.conf: {item!r} is not a network") from None
                if net.version != version:
                    raise InvalidInput(f"{key} in vz.conf takes IPv{version} networks, not {item}")
                pools[version].append(net)
        host: dict[int, Address | None] = {}
        for key, version in (("HOST_IP", 4), ("HOST_IP6", 6)):
            value = get(key)
            if value:
                try:
                    host[version] = ipaddress.ip_address(value)
                except ValueError:
                    raise InvalidInput(f"{key}={value!r} in vz.conf is not an IP address") from None
            else:
                host[version] = pools[version][0].network_address + 1 if pools[version] else None
        nat = get("NAT").strip().lower() in ("yes", "y", "true", "on", "1")
        ports = []
        for item in get("HOST_PORTS").replace(",", " ").split():
            try:
                f = parse_forward(item)
            except InvalidInput:
                raise InvalidInput(f"HOST_PORTS in vz.conf: {item!r} is not PROTO:PORT (e.g. udp:53)") from None
            ports.append((f.proto, f.host_port))
        rate = parse_rate(get("RATE"), "RATE in vz.conf") if get("RATE").strip() else None
        ct = parse_conntrack(get("CONNTRACK_MAX"), "CONNTRACK_MAX in vz.conf")
        return cls(tuple(pools[4]), tuple(pools[6]), host[4], host[6], nat, tuple(ports), rate, ct)

    def pools(self, version: int) -> tuple:
        return self.pools4 if version == 4 else self.pools6

    def host_address(self, version: int) -> Address | None:
        return self.host_ip if version == 4 else self.host_ip6

    def check_assignable(self, addr: Address) -> None:
        pools = self.pools(addr.version)
        net = next((n for n in pools if addr in n), None)
        if net is None:
            where = " ".join(map(str, pools)) or "none"
            raise InvalidInput(f"address {addr} is outside the IP pool ({'IP_POOL' if addr.version == 4 else 'IP6_POOL'}"
                               f" in vz.conf: {where})")
        if addr == self.host_address(addr.version):
            raise InvalidInput(f"address {addr} is the host's own address on the VEs' links (HOST_IP)")
        if net.num_addresses > 2 and addr in (net.network_address, net.broadcast_address) and addr.version == 4:
            raise InvalidInput(f"address {addr} is the network or broadcast address of {net}")

    def candidates(self, version: int, taken: set) -> Iterator[Address]:
        """The addresses of the pools that are not taken, lowest first."""
        for net in self.pools(version):
            first = net.network_address + (1 if net.num_addresses > 2 else 0)
            last = net.broadcast_address - (1 if net.num_addresses > 2 and version == 4 else 0)
            # A huge IPv6 pool is not walked to its end: nobody takes a million addresses.
            for n in range(int(first), min(int(last), int(first) + 1_000_000) + 1):
                addr = ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)
                if addr not in taken and addr != self.host_address(version):
                    yield addr

    def free(self, version: int, taken: set, count: int) -> list[Address]:
        """The first ``count`` addresses of the pools that are not taken."""
        return list(itertools.islice(self.candidates(version, taken), count))


RTN_NAMES = {6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}


def host_use(host, addr: Address, own: str, route=...) -> str | None:
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


def _listening(proto: str, port: int) -> bool:
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


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


MS_BIND = 4096
MNT_DETACH = 2
_libc_handle: list = []


def _libc():
    if not _libc_handle:
        import ctypes
        import ctypes.util

        _libc_handle.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
    return _libc_handle[0]


_boot: list[str] = []


def _boot_id() -> str:
    if not _boot:
        _boot.append(_read_sysctl("/proc/sys/kernel/random/boot_id"))
    return _boot[0]


def _read_counts(path: Path) -> tuple[int, int, int, int] | None:
    try:
        values = tuple(int(x) for x in path.read_text().split()[:4])
    except (OSError, ValueError):
        return None
    return values if len(values) == 4 else None


def _read_total(path: Path) -> tuple[tuple[int, int, int, int], set[str]]:
    try:
        lines = path.read_text().splitlines()
        counts = tuple(int(x) for x in lines[0].split()[:4])
    except (OSError, ValueError, IndexError):
        return (0, 0, 0, 0), set()
    if len(counts) != 4:
        return (0, 0, 0, 0), set()
    return counts, set(lines[1].split()) if len(lines) > 1 else set()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NetworkFeature(Feature):
    name = "network"
    params = ("ipadd", "ipdel", "portfwd", "portfwd_del", "netif_add", "netif_del", "bridge", "rate", "conntrack")

    # --- names and settings ---------------------------------------------------------------
    @property
    def layout(self):
        return self.engine.layout

    def settings(self) -> NetSettings:
        return NetSettings.load(self.layout.settings)

    def ifname(self, ctid: int) -> str:
        return ifname(self.layout.tag, ctid)

    @property
    def ifprefix(self) -> str:
        return f"vz{self.layout.tag}"

    @property
    def firewall(self) -> Firewall:
        return Firewall(self.layout.tag, self.ifprefix)

    @property
    def hook_path(self) -> Path:
        return self.layout.rundir / "vz-net-hook"

    @property
    def stop_hook_path(self) -> Path:
        return self.layout.rundir / "vz-net-stop-hook"

    @property
    def traffic_dir(self) -> Path:
        """Where each VE's traffic totals live: <root>/traffic/<ctid>/ (see ``totals``)."""
        return self.layout.root / "traffic"

    @contextlib.contextmanager
    def _netlock(self) -> Iterator[None]:
        self.layout.lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lockdir / "network.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not flock_within(fd, LOCK_WAIT, interval=0.02):
                raise Busy("the network of this engine root is busy; try again")
            yield
        finally:
            os.close(fd)

    # --- what a VE has --------------------------------------------------------------------
    @staticmethod
    def addresses(conf: VEConfig) -> list[Address]:
        out = []
        for a in conf.get_list("IP_ADDRESS"):
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_address(a))
        return out

    @staticmethod
    def forwards(conf: VEConfig) -> list[PortForward]:
        out = []
        for f in conf.get_list("PORTFWD"):
            with contextlib.suppress(InvalidInput):
                out.append(parse_forward(f))
        return out

    @staticmethod
    def netifs(conf: VEConfig) -> list[NetIf]:
        out = []
        for item in conf.get("NETIF").split(";"):
            n = NetIf.parse(item) if item.strip() else None
            if n is not None:
                out.append(n)
        return out

    @staticmethod
    def _set_netifs(conf: VEConfig, netifs: list[NetIf]) -> None:
        conf.set("NETIF", ";".join(map(str, netifs)))

    def limits(self, conf: VEConfig) -> tuple[int | None, int | None]:
        """(rate in kbit/s, conntrack cap) of a VE: its own (RATE, CONNTRACK_MAX), else vz.conf's."""
        s = self.settings()
        rate, cap = s.rate, s.conntrack_max
        with contextlib.suppress(InvalidInput):  # a hand-edited value that does not parse: the default
            if conf.get("RATE"):
                rate = parse_rate(conf.get("RATE"))
        with contextlib.suppress(InvalidInput):
            if conf.get("CONNTRACK_MAX"):
                cap = parse_conntrack(conf.get("CONNTRACK_MAX"))
        return rate, cap

    def ifb_name(self, ctid: int) -> str:
        return ifb_name(self.layout.tag, ctid)

    def _other_confs(self, ctid: int) -> Iterator[tuple[int, dict[str, str]]]:
        confdir = self.layout.confdir
        if not confdir.is_dir():
            return
        for p in confdir.glob("*.conf"):
            if p.stem.isdigit() and int(p.stem) != ctid:
                yield int(p.stem), read_kv(p)

    @property
    def _claims(self) -> Path:
        return self.layout.rundir / "net-claims"

    def _used_addresses(self, ctid: int) -> dict[Address, int]:
        """Addresses of the other VEs of this root, and those picked by a create still running."""
        used: dict[Address, int] = {}
        for other, values in self._other_confs(ctid):
            for a in values.get("IP_ADDRESS", "").split():
                with contextlib.suppress(ValueError):
                    used[ipaddress.ip_address(a)] = other
        if self._claims.is_dir():
            now = time.time()
            for p in self._claims.iterdir():
                try:
                    owner = int(p.read_text().strip() or 0)
                    if now - p.stat().st_mtime > CLAIM_SECONDS:
                        p.unlink(missing_ok=True)
                    elif owner != ctid:
                        used.setdefault(ipaddress.ip_address(p.name), owner)
                except (OSError, ValueError):
                    continue
        return used

    def _claim(self, addr: Address, ctid: int, rb: Rollback) -> None:
        self._claims.mkdir(parents=True, exist_ok=True)
        path = self._claims / str(addr)
        path.write_text(f"{ctid}\n")
        rb.add(f"release address {addr}", lambda: path.unlink(missing_ok=True))

    def _host_conflicts(self, addrs: list[Address], ctid: int) -> None:
        """Refuse addresses the host itself has, or routes to an interface that is not this VE's
        (another engine root's VE, say: each root knows only its own VEs' addresses)."""
        if not addrs:
            return
        from .netlink import Netlink

        with Netlink() as host:
            for a in addrs:
                why = host_use(host, a, self.ifname(ctid))
                if why:
                    raise InvalidInput(why)

    # --- Feature: check and apply ---------------------------------------------------------
    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        return {**self._check_routed(conf, params, creating), **self._check_netifs(conf, params, creating),
                **self._check_limits(params)}

    @staticmethod
    def _check_limits(params: dict) -> dict:
        """--rate and --conntrack: a value, unlimited, or default (vz.conf's)."""
        out = {}
        for key, conf_key, parse in (("rate", "RATE", parse_rate), ("conntrack", "CONNTRACK_MAX", parse_conntrack)):
            value = params.get(key)
            if value is None:
                continue
            s = str(value).strip()
            if s.lower() == "default":
                out[conf_key] = ""
                continue
            n = parse(s)
            out[conf_key] = "unlimited" if n is None else str(n)
        return {"limits": out} if out else {}

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
            for item in values.get("NETIF", "").split(";"):
                n = NetIf.parse(item) if item.strip() else None
                if n is not None:
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
                                   f"(vz{self.layout.tag}...), so leave HOST_IFNAME empty, e.g. {name},,,,br0")
            bridge = fields[4].strip() or (str(bridge_opt).strip() if bridge_opt else "")
            if not bridge:
                raise InvalidInput(f"interface {name} needs a bridge: --netif_add {name},,,,BRIDGE or --bridge BRIDGE")
            bridge = parse_ifname(bridge, "bridge name")
            if not Path("/sys/class/net", bridge).exists():
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

    def _check_routed(self, conf: VEConfig, params: dict, creating: bool) -> dict:
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
                    pools = " ".join(map(str, s.pools(version))) or "none configured"
                    raise InvalidInput(f"no free IPv{version} address left in the pool ({pools})")
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
                key = (f.proto, f.host_port)
                if any((g.proto, g.host_port) == key for g in pf_kept + pf_add):
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded to VE {ctid}")
                if key in taken:
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded to VE {taken[key]}")
                if key in foreign:
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is already forwarded on this host "
                                       "(by another engine root or tool)")
                if _listening(f.proto, f.host_port):
                    raise InvalidInput(f"host port {f.proto}:{f.host_port} is in use by a program on the host")
                pf_add.append(f)
        if pf_kept + pf_add and not (auto[4] or any(a.version == 4 for a in kept + add)):
            raise InvalidInput("port forwards need an IPv4 address on the VE: add one with --ipadd")
        return {"drop": drop, "add": add, "auto": auto, "pf_drop": pf_drop, "pf_add": pf_add}

    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        if not params:
            return
        with self._netlock():
            old = self.limits(conf)
            if "add" in params:
                self._apply_routed(conf, params, running, rb)
            if "netif_add" in params:
                self._apply_netifs(conf, params, running, rb)
            for key, value in params.get("limits", {}).items():
                conf.set(key, value)
            if running and (self.limits(conf) != old or {"add", "netif_add"} & set(params)):
                rb.add(f"restore the traffic limits of VE {conf.ctid}", lambda: self._undo_limits(conf, old))
                self._apply_limits(conf)
                self.engine._fail_point("set:after-limits")

    def _undo_limits(self, conf: VEConfig, old: tuple[int | None, int | None]) -> None:
        with self._netlock():
            self._apply_limits(conf, old)

    def _apply_limits(self, conf: VEConfig, limits: tuple[int | None, int | None] | None = None) -> None:
        """Make a running VE's rate and conntrack cap what its config says (network lock held)."""
        from . import tc

        ctid = conf.ctid
        rate, cap = limits or self.limits(conf)
        routed = self.ifname(ctid)
        devs = [d for d in (routed, *(n.host_ifname for n in self.netifs(conf))) if Path("/sys/class/net", d).exists()]
        ifb = self.ifb_name(ctid)
        if rate is None or not devs:
            if Path("/sys/class/net", ifb).exists():  # it goes with every limit the engine set
                for d in devs:
                    tc.clear_ingress(d)
                    tc.clear_egress(d)
                self._delete_ifb(ctid)
        else:
            from .netlink import Netlink

            with Netlink() as host:
                host.add_ifb(ifb)
            tc.set_egress_rate(ifb, rate)
            for d in devs:
                tc.set_egress_rate(d, rate)
                tc.redirect_ingress(d, ifb)
        if routed in devs:
            for family in ([4, 6] if have_ipv6() else [4]):
                if not self.firewall.set_conntrack_cap(ctid, routed, cap, family):
                    self._stamp.unlink(missing_ok=True)  # the root's chains are gone: make them again
                    self._ensure_host({a.version for a in self.addresses(conf)} or {4})
                    self.firewall.set_conntrack_cap(ctid, routed, cap, family)
        elif self._stamp.exists():
            for family in ([4, 6] if have_ipv6() else [4]):
                self.firewall.set_conntrack_cap(ctid, routed, None, family, running=False)

    def _delete_ifb(self, ctid: int) -> None:
        ifb = self.ifb_name(ctid)
        if Path("/sys/class/net", ifb).exists():
            from .netlink import Netlink

            with Netlink() as host:
                host.delete_link(ifb)

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
        from .netlink import Netlink, NetlinkError

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
        ours = [n.host_ifname for n in netifs if Path("/sys/class/net", n.host_ifname).exists()]
        if not ours:
            return
        from .netlink import Netlink

        with Netlink() as host:
            for name in ours:
                host.delete_link(name)

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
                self._claim(a, ctid, rb)
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
            self._sync(ctid, new, pf, nsfd, drop=[a for a in old if a not in new], added=added,
                       pf_changed=pf != old_pf or _first4(new) != _first4(old) or _first6(new) != _first6(old))
        finally:
            os.close(nsfd)

    def _pick(self, s: NetSettings, version: int, taken: set, count: int, ctid: int) -> list[Address]:
        """The next free addresses of the pool: not taken here, and not in use on the host either
        (another engine root may use the same range)."""
        from .netlink import Netlink

        picked: list[Address] = []
        with Netlink() as host:
            for addr in s.candidates(version, taken):
                if host_use(host, addr, self.ifname(ctid)):
                    continue  # another root's VE, or the host's own
                picked.append(addr)
                if len(picked) == count:
                    return picked
        raise InvalidInput(f"no free IPv{version} address left in the pool "
                           f"({' '.join(map(str, s.pools(version))) or 'none configured'})")

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

    # --- Feature: life cycle --------------------------------------------------------------
    def lxc_config(self, conf: VEConfig) -> list[str]:
        self._write_hook()
        if (conf.get("IP_ADDRESS") or conf.get("NETIF")) and "vzengine.netlink" not in sys.modules:
            # The engine writes the LXC config just before lxc-start: import pyroute2 (~0.2 s of
            # CPU) meanwhile, so after_start finds it loaded. Not a daemon thread: a process that
            # ends right away (vzctl create) waits for the import instead of cutting it off.
            threading.Thread(target=importlib.import_module, args=("vzengine.netlink",)).start()
        return [f"lxc.hook.start-host = {self.hook_path}", f"lxc.hook.stop = {self.stop_hook_path}"]

    def after_start(self, conf: VEConfig) -> None:
        addrs, pf, netifs = self.addresses(conf), self.forwards(conf), self.netifs(conf)
        if not addrs and not pf and not netifs:
            return
        from . import checkpoint

        with self._netlock():
            nsfd = self._open_netns(conf.ctid)
            if nsfd is None:
                raise StateError(f"VE {conf.ctid} stopped while its network was being set up")
            try:
                if addrs or pf:
                    self._sync(conf.ctid, addrs, pf, nsfd, pf_changed=bool(pf), fresh=True)
                self._add_netifs(conf.ctid, netifs, nsfd)
                self._apply_limits(conf)
                if (addrs or pf) and checkpoint.is_resuming(self.engine, conf.ctid):
                    self._hold_netns(conf.ctid, nsfd)
            finally:
                os.close(nsfd)

    # A VE that CRIU restored is watched by lxc-checkpoint's monitor, which keeps no handle on
    # the VE's network namespace: when the VE stops, the namespace and the veth with its counts
    # are gone before the stop hook runs. So the engine holds that namespace itself (a bind
    # mount, as `ip netns` does) until the stop hook or the engine has read the counts.
    def _netns_handle(self, ctid: int) -> Path:
        return self.layout.rundir / "netns" / str(ctid)

    def _hold_netns(self, ctid: int, nsfd: int) -> None:
        handle = self._netns_handle(ctid)
        self._release_netns(ctid)
        handle.parent.mkdir(parents=True, exist_ok=True)
        handle.touch()
        if _libc().mount(f"/proc/self/fd/{nsfd}".encode(), str(handle).encode(), None, MS_BIND, None) != 0:
            handle.unlink(missing_ok=True)  # then this run's counts end with it, as before

    def _release_netns(self, ctid: int) -> None:
        handle = self._netns_handle(ctid)
        if handle.exists():
            _libc().umount2(str(handle).encode(), MNT_DETACH)
            with contextlib.suppress(OSError):
                handle.unlink()

    def restore_after_reboot(self, ctid: int, pid: int) -> None:
        """Set a VE's network up again in the namespace LXC made for it (the start-host hook)."""
        conf = self.engine.config(ctid)
        addrs, pf, netifs = self.addresses(conf), self.forwards(conf), self.netifs(conf)
        if not addrs and not pf and not netifs:
            return
        with self._netlock():
            try:
                nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise StateError(f"cannot open the network namespace of pid {pid}: {e.strerror}") from None
            try:
                if os.fstat(nsfd).st_ino == os.stat("/proc/self/ns/net").st_ino:
                    raise StateError(f"pid {pid} is in the host's network namespace, not in a VE's")
                if addrs or pf:
                    self._sync(ctid, addrs, pf, nsfd, pf_changed=bool(pf))
                self._add_netifs(ctid, netifs, nsfd)
                self._apply_limits(conf)
            finally:
                os.close(nsfd)

    def after_stop(self, conf: VEConfig) -> None:
        try:
            self._teardown(conf.ctid, self.addresses(conf), bool(self.forwards(conf)))
        finally:
            # Usually gone with the VE's namespace already; not when the engine held it (a resume).
            self._remove_netifs(self.netifs(conf))

    def destroy(self, conf: VEConfig) -> None:
        self._remove_netifs(self.netifs(conf))
        # Its DNAT chain can only exist once this root's chains were made (the stamp says so).
        self._teardown(conf.ctid, self.addresses(conf), bool(self.forwards(conf)) or self._stamp.exists())
        if self._claims.is_dir():
            for p in self._claims.iterdir():
                with contextlib.suppress(OSError):
                    if p.read_text().strip() == str(conf.ctid):
                        p.unlink()
        shutil.rmtree(self.traffic_dir / str(conf.ctid), ignore_errors=True)

    def purge(self) -> None:
        """Remove every veth, proxy entry, rule and chain of this root (forwarding stays on)."""
        ours = [n for n in os.listdir("/sys/class/net") if n.startswith(self.ifprefix)]
        if ours:
            from .netlink import Netlink

            with Netlink() as host:
                for name in ours:
                    host.delete_link(name)
        self.firewall.purge([4, 6] if have_ipv6() else [4])
        handles = self.layout.rundir / "netns"
        if handles.is_dir():
            for p in handles.iterdir():
                if p.name.isdigit():
                    self._release_netns(int(p.name))
            with contextlib.suppress(OSError):
                handles.rmdir()
        for p in (self.hook_path, self.stop_hook_path, self._stamp):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.traffic_dir, ignore_errors=True)
        if self._claims.is_dir():
            for p in self._claims.iterdir():
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._claims.rmdir()

    def info(self, conf: VEConfig, running: bool) -> dict:
        out: dict = {}
        pf = self.forwards(conf)
        if pf:
            out["portfwd"] = [str(f) for f in pf]
        netifs = self.netifs(conf)
        if netifs:
            out["netifs"] = [n.to_dict() for n in netifs]
        out["rate_kbit"], out["conntrack_max"] = self.limits(conf)
        stats = self.counters(conf.ctid) if running else None
        out.update(zip(COUNTERS, stats or (0, 0, 0, 0), strict=True))
        out.update(self.usage(conf))  # since the VE was created: net_in_bytes ... net_out_packets
        if stats is not None:
            out["netif"] = self.ifname(conf.ctid)
        return out

    def counters(self, ctid: int) -> tuple[int, int, int, int] | None:
        """(bytes in, packets in, bytes out, packets out) of a VE since its network came up.

        Read from its host-side veth: what the host sends into it is the VE's "in". None when
        the VE has no veth. The counters start at zero at every start or reboot of the VE;
        ``totals`` adds up every run since the VE was created.
        """
        run = self._veth_run(ctid)
        return None if run is None else run[1]

    # --- traffic totals ---------------------------------------------------------------------
    # Each veth a VE had is one "run" of its network, named <boot id>-<ifindex> (an interface
    # index is not given twice in one boot). <root>/traffic/<ctid>/<run> holds the last counts of
    # a run that ended; the stop hook writes it when the VE stops or reboots (LXC runs it while it
    # still holds the VE's network namespace, so the veth is still there), and the engine before
    # it deletes a veth itself (--ipdel all; a suspend, via checkpoint.py). Writing a run again
    # only raises it, so nothing counts twice. "total" holds the sum of older runs, folded in
    # under the network lock, and on its second line the runs it took in (a fold cut short
    # leaves their files, which are then skipped and removed).
    def usage(self, conf: VEConfig) -> dict:
        """Traffic since the VE was created: Engine.usage's net_in_bytes ... net_out_packets."""
        return dict(zip(TOTALS, self.totals(conf.ctid), strict=True))

    def totals(self, ctid: int) -> tuple[int, int, int, int]:
        """(bytes in, packets in, bytes out, packets out) of every run of the VE's network."""
        current = self._veth_run(ctid)
        out = list(current[1]) if current else [0, 0, 0, 0]
        d = self.traffic_dir / str(ctid)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return tuple(out)
        base, folded = _read_total(d / "total")
        for i, n in enumerate(base):
            out[i] += n
        for name in names:
            if name == "total" or name.startswith(".") or name in folded or (current and name == current[0]):
                continue
            for i, n in enumerate(_read_counts(d / name) or ()):
                out[i] += n
        return tuple(out)

    def _veth_run(self, ctid: int) -> tuple[str, tuple[int, int, int, int]] | None:
        """(run name, counters) of the VE's host-side veth now; None when it has none."""
        base = f"/sys/class/net/{self.ifname(ctid)}"
        try:
            with open(f"{base}/ifindex") as f:
                index = f.read().strip()
            counts = []
            for name in VETH_STATS:
                with open(f"{base}/statistics/{name}") as f:
                    counts.append(int(f.read()))
        except (OSError, ValueError):
            return None
        return f"{_boot_id()}-{index}", tuple(counts)

    def save_traffic(self, ctid: int) -> None:
        """Keep the counts of the VE's veth before the engine deletes it (checkpoint.py too)."""
        run = self._veth_run(ctid)
        if run is not None:
            self._save_run(ctid, run[0], run[1])

    def _save_run(self, ctid: int, name: str, counts: tuple[int, int, int, int]) -> None:
        d = self.traffic_dir / str(ctid)
        d.mkdir(parents=True, exist_ok=True)
        path = d / name
        old = _read_counts(path) or (0, 0, 0, 0)
        _write_atomic(path, " ".join(str(max(a, b)) for a, b in zip(old, counts, strict=True)) + "\n")

    def veth_deleted(self, name: str, index: int, stats: dict) -> int | None:
        """Keep the last counts of a VE's host-side veth that was deleted under us; return its VE, or None.

        A VE's root can delete its own eth0, which deletes the whole pair: the host's end, where its traffic
        is counted, with the counts since the last reading. The node agent watches deletions (the kernel's
        message carries the final counters) and calls this. Writing a run only raises it, so a veth the stop
        hook or the engine already saved counts once.
        """
        rest = name[len(self.ifprefix):] if name.startswith(self.ifprefix) else ""
        try:
            ctid = int(rest[1:], 36) if rest.startswith("x") else int(rest) if rest.isdigit() else None
        except ValueError:
            return None
        if ctid is None or self.ifname(ctid) != name or not self.engine.exists(ctid):
            return None
        d = self.traffic_dir / str(ctid)
        run = f"{_boot_id()}-{index}"
        if run in _read_total(d / "total")[1]:
            return ctid  # folded into the total already
        self._save_run(ctid, run, tuple(int(stats.get(k, 0)) for k in VETH_STATS))
        return ctid

    def _fold_runs(self, ctid: int) -> None:
        """Add the runs that ended into "total" (the network lock is held)."""
        d = self.traffic_dir / str(ctid)
        try:
            names = [n for n in os.listdir(d) if n != "total" and not n.startswith(".")]
        except FileNotFoundError:
            return
        if not names:
            return
        current = self._veth_run(ctid)
        base, folded = _read_total(d / "total")
        total, taken = list(base), []
        for name in names:
            if name in folded:
                (d / name).unlink(missing_ok=True)  # folded before, but not removed then
            elif not (current and name == current[0]):
                for i, n in enumerate(_read_counts(d / name) or ()):
                    total[i] += n
                taken.append(name)
        if taken:
            _write_atomic(d / "total", " ".join(map(str, total)) + "\n" + " ".join(taken) + "\n")
            for name in taken:
                (d / name).unlink(missing_ok=True)

    # --- host plumbing --------------------------------------------------------------------
    def _init_pid(self, ctid: int) -> int | None:
        """The host pid of the VE's init: from its cgroup (cheap), else ask LXC."""
        procs = cgroups.read("pids", self.layout.cgroup_dir(ctid), "cgroup.procs") or \
            cgroups.read("memory", self.layout.cgroup_dir(ctid), "cgroup.procs") or ""
        for pid in procs.split():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            if line.split()[-1] == "1":
                                return int(pid)
                            break
            except OSError:
                continue
        return self.engine.lxc.init_pid(ctid)

    def _open_netns(self, ctid: int) -> int | None:
        pid = self._init_pid(ctid)
        if pid is None:
            return None
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:  # never configure the host's
            os.close(fd)
            raise StateError(f"VE {ctid} has no network namespace of its own")
        return fd

    @property
    def _stamp(self) -> Path:
        return self.layout.rundir / "net-firewall"

    def _ensure_host(self, versions: set[int]) -> None:
        """Forwarding on, and this root's firewall chains in place (once per host boot)."""
        s = self.settings()
        if 4 in versions and _read_sysctl("/proc/sys/net/ipv4/ip_forward") != "1":
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        if 6 in versions and _read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding") != "1":
            # A router ignores router advertisements unless accept_ra is 2: keep the host's own
            # IPv6 default route on interfaces that take it from RAs.
            for conf_dir in Path("/proc/sys/net/ipv6/conf").iterdir():
                if conf_dir.name not in ("all", "default") and _read_sysctl(str(conf_dir / "accept_ra")) == "1":
                    with contextlib.suppress(OSError):
                        _write_sysctl(str(conf_dir / "accept_ra"), "2")
            _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        families = [4, 6] if have_ipv6() else [4]
        bridged = {4: _read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
                   6: _read_sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1"}
        want = " ".join([_read_sysctl("/proc/sys/kernel/random/boot_id"), *map(str, s.pools4), *map(str, s.pools6),
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
              drop: list[Address] = (), added: list[Address] | None = None, pf_changed: bool = False,
              fresh: bool = False) -> None:
        """Make a running VE's network match ``addrs`` and ``forwards`` (the network lock is held).

        ``drop`` are addresses to take away and ``added`` the new ones (None: all of ``addrs``
        may be new); ``fresh`` says the VE has just started, so nothing of its network exists.
        """
        from .netlink import Netlink

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
            link = None if fresh and not Path("/sys/class/net", dev).exists() else host.link(dev)
            eth = None if link is None else ve.link(VE_IFNAME)
            if link is not None and (eth is None or eth.peer_index != link.index or link.peer_index != eth.index):
                self.save_traffic(ctid)
                host.delete_link(dev)  # left over from a namespace that is gone or going
                link = None
            new_pair = link is None
            if new_pair:
                host_index, eth0 = self._new_pair(host, ve, dev, nsfd)
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter", "1")
                self._fold_runs(ctid)  # the runs before this one have ended
            else:
                host_index, eth0 = link.index, link.peer_index  # eth0's index inside the VE
                host.set_up(host_index)
                if _read_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/route_localnet") == "1":
                    # an older engine sent the host's 127.0.0.1:port into the VE: never again
                    _write_sysctl(f"/proc/sys/net/ipv4/conf/{dev}/route_localnet", "0")
            if v4:
                host.add_address(host_index, _iface(s.host_ip))
            if v6:
                host.add_address(host_index, _iface(s.host_ip6))
                # The veth's own link-local address is tentative for a second or two (DAD), and
                # until then the host sends no neighbour solicitation on it: fe80::1 is usable
                # at once, and it is the VE's IPv6 gateway.
                host.add_address(host_index, ipaddress.ip_interface(f"{GATEWAY6}/64"))
            for a in drop:
                host.del_route(_host_net(a), host_index)
                self._unproxy(host, a)
            for a in (addrs if new_pair or added is None else added):
                self._route_to_ve(host, a, host_index)

            ve.set_up(1)  # lo
            ve.set_up(eth0)
            for a in drop:
                ve.del_address(eth0, _iface(a))
            for a in (addrs if new_pair or added is None else added):
                ve.add_address(eth0, _iface(a))
            for version, mine, gateway in ((4, v4, s.host_ip), (6, v6, GATEWAY6)):
                family = socket.AF_INET if version == 4 else socket.AF_INET6
                default = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
                has_default = False if new_pair else ve.has_default_route(family, eth0)
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
    def _new_pair(host, ve, dev: str, nsfd: int) -> tuple[int, int]:
        """Create the VE's veth pair; return the indexes of its host side and of eth0 inside."""
        from .netlink import NetlinkError

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
            return link.index, link.peer_index
        return host.index(dev), 2

    def _route_to_ve(self, host, addr: Address, index: int) -> None:
        """Route ``addr`` into the VE; answer ARP/NDP for it where it belongs to a host subnet."""
        from .netlink import NetlinkError

        before = host.lookup(addr)  # what the host would do with it without the VE
        why = host_use(host, addr, host.name(index), before)
        if why:
            raise InvalidInput(why)
        try:
            host.add_route(_host_net(addr), index, exist_ok=before is not None and before.oif == index)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:  # someone else's route for it appeared meanwhile
                raise InvalidInput(f"{addr} is already in use on this host (it has a route for it)") from None
            raise
        if before is not None and before.connected and before.oif != index:
            uplink = host.name(before.oif)
            if uplink and not uplink.startswith("vz"):
                if addr.version == 6:
                    _write_sysctl(f"/proc/sys/net/ipv6/conf/{uplink}/proxy_ndp", "1")
                host.add_proxy_neighbour(addr, before.oif)

    @staticmethod
    def _unproxy(host, addr: Address) -> None:
        """Stop answering ARP/NDP for ``addr`` (its route into the VE is gone already)."""
        route = host.lookup(addr)
        if route is not None and route.connected:
            host.del_proxy_neighbour(addr, route.oif)

    def _teardown(self, ctid: int, addrs: list[Address], forwards: bool, locked: bool = False) -> None:
        """Remove the VE's veth (its routes go with it), proxy entries and port forwards."""
        lock = contextlib.nullcontext() if locked else self._netlock()
        with lock:
            dev = self.ifname(ctid)
            if Path("/sys/class/net", dev).exists() or addrs:
                from .netlink import Netlink

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

    # --- the reboot hook ------------------------------------------------------------------
    def _write_hook(self) -> None:
        lay = self.layout
        project = Path(__file__).resolve().parent.parent
        # Shell builtins only (no grep, no cat): it runs inside every lxc-start.
        text = f"""#!/bin/sh
# Written by vzengine (network.py); LXC runs it on the host before a VE's init starts.
# When the engine itself is starting the VE, it sets the network up afterwards: exit at once.
# Otherwise LXC is restarting the VE after a reboot inside it, in a new network namespace: set
# the network up now, or, while another engine operation holds the VE (a backup, say), just
# after it in the background, so that the hook never waits for that operation.
ctid="$1"
holder=
read -r holder 2>/dev/null < "{lay.lockdir}/$ctid.lock"
case "$holder" in
"") mode=now ;;
"start (pid "*|"restart (pid "*|"resume (pid "*|"rescue (pid "*|"rescue-leave (pid "*) mode=skip ;;
*) mode=later ;;
esac
if [ "$mode" != now ]; then
    pid=${{holder##*pid }}; pid=${{pid%)}}
    if [ -d "/proc/$pid" ]; then [ "$mode" = skip ] && exit 0; else mode=now; fi
fi
wanted=
while IFS= read -r line; do
    case "$line" in IP_ADDRESS=*|PORTFWD=*|NETIF=*) wanted=1; break ;; esac
done 2>/dev/null < "{lay.confdir}/$ctid.conf"
[ -n "$wanted" ] || exit 0
restore() {{
    PYTHONPATH="{project}" "{sys.executable}" -m vzengine.cli.vzctl --root "{lay.root}" -q \\
        net-hook "$ctid" "$LXC_PID" </dev/null >>"{lay.logdir}/$ctid.net.log" 2>&1
}}
if [ "$mode" = later ]; then (exec </dev/null >/dev/null 2>&1; restore) & else restore; fi
exit 0
"""
        stop = f"""#!/bin/sh
# Written by vzengine (network.py); LXC runs it on the host when a VE has stopped or reboots,
# while it still holds the VE's network namespace: the VE's host-side veth is still there, so
# keep what it counted (one file per veth, named <boot id>-<ifindex>; NetworkFeature.totals).
ctid="$1"
dev="vz{lay.tag}$ctid"
if [ ${{#dev}} -gt 15 ]; then  # network.ifname(): long ids in base 36
    set -- 0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z
    n=$ctid; d=
    while [ "$n" -gt 0 ]; do eval "c=\\${{$((n % 36 + 1))}}"; d="$c$d"; n=$((n / 36)); done
    dev="vz{lay.tag}x$d"
fi
s="/sys/class/net/$dev"
read -r index 2>/dev/null < "$s/ifindex" || exit 0
read -r boot < /proc/sys/kernel/random/boot_id
read -r ib < "$s/statistics/tx_bytes"; read -r ip < "$s/statistics/tx_packets"
read -r ob < "$s/statistics/rx_bytes"; read -r op < "$s/statistics/rx_packets"
dir="{self.traffic_dir}/$ctid"
[ -d "$dir" ] || mkdir -p "$dir" || exit 0
# Never lower what was kept: a veth being deleted (a suspend) reads 0 for what its peer sent.
old=; read -r old 2>/dev/null < "$dir/$boot-$index"
set -- $old 0 0 0 0
ib=${{ib:-0}}; ip=${{ip:-0}}; ob=${{ob:-0}}; op=${{op:-0}}
[ "$1" -gt "$ib" ] && ib=$1; [ "$2" -gt "$ip" ] && ip=$2; [ "$3" -gt "$ob" ] && ob=$3; [ "$4" -gt "$op" ] && op=$4
echo "$ib $ip $ob $op" > "$dir/.$boot-$index.$$" && mv -f "$dir/.$boot-$index.$$" "$dir/$boot-$index"
handle="{self._netns_handle(0).parent}/$ctid"  # held by the engine for a VE CRIU restored: let it go
[ -f "$handle" ] && {{ umount -l "$handle"; rm -f "$handle"; }} 2>/dev/null
exit 0
"""
        for path, content in ((self.hook_path, text), (self.stop_hook_path, stop)):
            try:
                if path.read_text() == content:
                    continue
            except OSError:
                pass
            lay.rundir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # writers may race
            tmp.write_text(content)
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)


def _first4(addrs: list[Address]) -> Address | None:
    return next((a for a in addrs if a.version == 4), None)


def _first6(addrs: list[Address]) -> Address | None:
    return next((a for a in addrs if a.version == 6), None)


# --- command line ------------------------------------------------------------------------------

def add_set_options(parser) -> None:
    g = parser.add_argument_group("network")
    g.add_argument("--ipadd", action="append", default=None, metavar="ADDRESS",
                   help="add an IPv4 or IPv6 address (auto: the next free one of the pool; auto6 for IPv6)")
    g.add_argument("--ipdel", action="append", default=None, metavar="ADDRESS",
                   help="remove an address (all: every address)")
    g.add_argument("--portfwd", action="append", default=None, metavar="PROTO:HOSTPORT:VEPORT",
                   help="forward a host port to the VE's first IPv4 address, and to its first IPv6 "
                        "address when it has one (e.g. tcp:2201:22)")
    g.add_argument("--portfwd-del", action="append", default=None, metavar="PROTO:HOSTPORT",
                   help="remove a port forward (all: every one)")
    g.add_argument("--netif_add", "--netif-add", dest="netif_add", action="append", default=None,
                   metavar="NAME[,MAC,,HOST_MAC,BRIDGE]",
                   help="add a bridged interface (layer 2, no anti-spoofing), e.g. eth1,,,,br0; MACs are "
                        "generated when left empty")
    g.add_argument("--bridge", default=None, metavar="BRIDGE",
                   help="the host bridge of the --netif_add interfaces that name none")
    g.add_argument("--netif_del", "--netif-del", dest="netif_del", action="append", default=None,
                   metavar="NAME", help="remove a bridged interface (all: every one)")
    g.add_argument("--rate", default=None, metavar="RATE",
                   help="limit the VE's traffic each way: kbit/s, or 512K, 10M, 1G (bit/s); unlimited; "
                        "default (vz.conf RATE)")
    g.add_argument("--conntrack", default=None, metavar="N",
                   help="at most N connections the VE opens through the host at once (unlimited; default: "
                        "vz.conf CONNTRACK_MAX, 4096)")


def set_params(args) -> dict:
    return {"ipadd": getattr(args, "ipadd", None), "ipdel": getattr(args, "ipdel", None),
            "portfwd": getattr(args, "portfwd", None), "portfwd_del": getattr(args, "portfwd_del", None),
            "netif_add": getattr(args, "netif_add", None), "netif_del": getattr(args, "netif_del", None),
            "bridge": getattr(args, "bridge", None), "rate": getattr(args, "rate", None),
            "conntrack": getattr(args, "conntrack", None)}


def register_commands(subparsers) -> None:
    # Not for users: the LXC start-host hook calls it after a reboot inside a VE.
    p = subparsers.add_parser("net-hook")
    p.add_argument("ctid")
    p.add_argument("pid", type=int)


def run_command(eng, args, progress) -> int | None:
    if args.command != "net-hook":
        return None
    from . import validate

    feature = next(f for f in eng.features if isinstance(f, NetworkFeature))
    try:
        feature.restore_after_reboot(validate.ctid(args.ctid), args.pid)
    except VZError as e:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} VE {args.ctid}: network not restored: {e.message}",
              file=sys.stderr)
        return 1
    return 0


def _count(key: str):
    return lambda i: i.extra.get(key, "-") if i.running else "-"


def _total(key: str):
    return lambda i: i.extra.get(key, "-")


VZLIST_FIELDS = {
    "traffic_in": ("IN_BYTES", 12, _count("traffic_in_bytes")),
    "traffic_out": ("OUT_BYTES", 12, _count("traffic_out_bytes")),
    "packets_in": ("IN_PKTS", 10, _count("traffic_in_packets")),
    "packets_out": ("OUT_PKTS", 10, _count("traffic_out_packets")),
    # since the VE was created (every run, stopped VEs too): NetworkFeature.totals
    "traffic_in_total": ("IN_TOTAL", 12, _total("net_in_bytes")),
    "traffic_out_total": ("OUT_TOTAL", 12, _total("net_out_bytes")),
    "packets_in_total": ("IN_PKTS_TOTAL", 13, _total("net_in_packets")),
    "packets_out_total": ("OUT_PKTS_TOTAL", 14, _total("net_out_packets")),
    "netif": ("NETIF", 20, lambda i: " ".join(f"{n['ifname']}@{n['bridge']}" for n in i.extra.get("netifs", []))
              or "-"),
    "portfwd": ("PORTFWD", 20, lambda i: " ".join(i.extra.get("portfwd", [])) or "-"),
    "rate": ("RATE", 6, lambda i: human_rate(i.extra.get("rate_kbit"))),
    "conntrack": ("CT_MAX", 8, lambda i: str(i.extra.get("conntrack_max") or "-")),
}
