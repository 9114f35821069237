"""What a VE's network settings say, parsed and checked: pure functions, no host access.

Addresses (IP_ADDRESS, --ipadd), port forwards (PORTFWD, --portfwd), rates (RATE, --rate),
conntrack caps (CONNTRACK_MAX, --conntrack), and bridged interfaces (NETIF, --netif_add: names
and MACs). Bad input raises InvalidInput with a message that says what to give instead.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass

from ..errors import InvalidInput
from ..firewall import PortForward

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

RATE_MAX_KBIT = 100_000_000  # 100 Gbit/s
CONNTRACK_RANGE = (16, 10_000_000)
UNLIMITED = ("unlimited", "none", "max")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(k|kbit|m|mbit|g|gbit)?(?:/s)?$", re.IGNORECASE)
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


# --- routed: addresses and port forwards -----------------------------------------------------

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


def stored_addresses(values: list[str]) -> list[Address]:
    """The addresses of a stored IP_ADDRESS list (a hand-edited value that does not parse is skipped)."""
    out = []
    for a in values:
        try:
            out.append(ipaddress.ip_address(a))
        except ValueError:
            continue
    return out


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


def host_iface(addr: Address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """``addr`` as an interface address of its own (/32 or /128)."""
    return ipaddress.ip_interface(f"{addr}/{addr.max_prefixlen}")


def host_net(addr: Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``addr`` as a host route's destination (/32 or /128)."""
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


def first_of(addrs: list[Address], version: int) -> Address | None:
    """The first address of one family (port forwards go to it)."""
    return next((a for a in addrs if a.version == version), None)


# --- fairness: rate and conntrack cap ----------------------------------------------------------

def parse_rate(value: object, what: str = "--rate") -> int | None:
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


def parse_conntrack(value: object, what: str = "--conntrack") -> int | None:
    """A number of tracked connections, or unlimited."""
    s = str(value).strip()
    if s.lower() in UNLIMITED:
        return None
    lo, hi = CONNTRACK_RANGE
    if not s.isdigit() or not lo <= int(s) <= hi:
        raise InvalidInput(f"invalid {what} {value!r}: use a whole number from {lo} to {hi}, or unlimited")
    return int(s)


def human_rate(kbit: int | None) -> str:
    """A rate as vzlist shows it: 512K, 10M, 1.5G; - for none."""
    if kbit is None:
        return "-"
    for unit, n in (("G", 1_000_000), ("M", 1000)):
        if kbit >= n and kbit % (n // 10) == 0:
            return f"{kbit / n:g}{unit}"
    return f"{kbit}K"


# --- bridged interfaces (NETIF) ----------------------------------------------------------------

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


def parse_netifs(value: str) -> list[NetIf]:
    """Every entry of a NETIF value (entries separated by ';'; one that does not parse is skipped)."""
    out = []
    for item in value.split(";"):
        n = NetIf.parse(item) if item.strip() else None
        if n is not None:
            out.append(n)
    return out


def format_netifs(netifs: list[NetIf]) -> str:
    """The NETIF value of a list of bridged interfaces (the inverse of ``parse_netifs``)."""
    return ";".join(map(str, netifs))


def parse_ifname(value: str, what: str) -> str:
    """An interface name: a letter, then letters, digits, '.', '-' or '_', 15 characters at most."""
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
