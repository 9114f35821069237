"""Where VE addresses come from: the root's pools (vz.conf) and the claims of operations in progress.

``NetSettings`` is vz.conf's network part, parsed (pure). ``Claims`` are files under
<rundir>/net-claims/, one per address a create or set picked and has not stored yet: another
operation of the same root running meanwhile must not pick it too. A claim older than
CLAIM_SECONDS is stale (its operation died) and is dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import InvalidInput
from .addresses import Address, parse_conntrack, parse_forward, parse_rate

if TYPE_CHECKING:
    from ..rollback import Rollback

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
CLAIM_SECONDS = 120  # how long an address picked by a create/set still in progress stays taken
WALK_LIMIT = 1_000_000  # a huge IPv6 pool is not walked to its end: nobody takes a million addresses

_A = TypeVar("_A", ipaddress.IPv4Address, ipaddress.IPv6Address)


def _host_address(key: str, value: str, kind: type[_A], pools: list) -> _A | None:
    """HOST_IP or HOST_IP6: the address given, else the first address of the first pool (None: no pool)."""
    if not value:
        return pools[0].network_address + 1 if pools else None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"{key}={value!r} in vz.conf is not an IP address") from None
    try:
        return kind(value)
    except ValueError:
        version = 4 if kind is ipaddress.IPv4Address else 6
        raise InvalidInput(f"{key} in vz.conf takes an IPv{version} address, not {value}") from None


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
        """Parse vz.conf's network settings ($VZ_<NAME> overrides, NET_DEFAULTS fills in)."""
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
        host4 = _host_address("HOST_IP", get("HOST_IP"), ipaddress.IPv4Address, pools[4])
        host6 = _host_address("HOST_IP6", get("HOST_IP6"), ipaddress.IPv6Address, pools[6])
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
        return cls(tuple(pools[4]), tuple(pools[6]), host4, host6, nat, tuple(ports), rate, ct)

    def pools(self, version: int) -> tuple:
        return self.pools4 if version == 4 else self.pools6

    def host_address(self, version: int) -> Address | None:
        return self.host_ip if version == 4 else self.host_ip6

    def check_assignable(self, addr: Address) -> None:
        """Refuse an address a VE cannot have: outside the pools, the host's, a network or broadcast address."""
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
            for n in range(int(first), min(int(last), int(first) + WALK_LIMIT) + 1):
                addr = ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)
                if addr not in taken and addr != self.host_address(version):
                    yield addr

    def free(self, version: int, taken: set, count: int) -> list[Address]:
        """The first ``count`` addresses of the pools that are not taken."""
        return list(itertools.islice(self.candidates(version, taken), count))

    def describe(self, version: int) -> str:
        """The pools of one family, for messages."""
        return " ".join(map(str, self.pools(version))) or "none configured"


class Claims:
    """Addresses picked by operations still in progress: one file per address, holding its VE's id."""

    def __init__(self, path: Path):
        self.path = path

    def taken(self, ctid: int) -> dict[Address, int]:
        """Addresses claimed for VEs other than ``ctid`` (stale claims are dropped on the way)."""
        out: dict[Address, int] = {}
        if not self.path.is_dir():
            return out
        now = time.time()
        for p in self.path.iterdir():
            try:
                owner = int(p.read_text().strip() or 0)
                if now - p.stat().st_mtime > CLAIM_SECONDS:
                    p.unlink(missing_ok=True)
                elif owner != ctid:
                    out[ipaddress.ip_address(p.name)] = owner
            except (OSError, ValueError):
                continue
        return out

    def claim(self, addr: Address, ctid: int, rb: Rollback) -> None:
        """Claim ``addr`` for VE ``ctid`` until the operation ends (its rollback releases it on failure)."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / str(addr)
        path.write_text(f"{ctid}\n")
        rb.add(f"release address {addr}", lambda: path.unlink(missing_ok=True))

    def release(self, ctid: int) -> None:
        """Drop every claim of VE ``ctid`` (it is being destroyed)."""
        if self.path.is_dir():
            for p in self.path.iterdir():
                with contextlib.suppress(OSError):
                    if p.read_text().strip() == str(ctid):
                        p.unlink()

    def purge(self) -> None:
        """Drop every claim, and their directory."""
        if self.path.is_dir():
            for p in self.path.iterdir():
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()
