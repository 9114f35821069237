"""IP pools of a node: checking a pool, picking free addresses and SSH ports for hosting VEs.

The panel assigns explicit addresses from its own pools (never the engine's ``auto``), so it always knows
which are in use; the IPAddress rows are the record, and the unique address column settles two requests
racing for one address. The engine checks every address again (inside its IP_POOL, not in use on the host).
"""

from __future__ import annotations

import ipaddress
import itertools

from django.dispatch import Signal

# Sent with address=<IPAddress> whenever an address's reverse-DNS name is set or the address goes
# (name=""): a DNS updater can listen; `manage.py export_rdns` prints them all.
reverse_dns_changed = Signal()

MAX_NAMESERVERS = 4
MIN_PREFIX = {4: 8, 6: 32}


class PoolError(Exception):
    """A pool or an address request the panel refuses, with a message for the admin or customer, and the
    pool's field at fault (if one is), so a form shows the message next to it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network((value or "").strip(), strict=True)
    except ValueError as exc:
        if "host bits" in str(exc):
            raise PoolError(f"{value!r} has host bits set: write the network address (e.g. "
                            f"{ipaddress.ip_network(value.strip(), strict=False)}).", "network") from None
        raise PoolError(f"{value!r} is not a network: write ADDRESS/PREFIX, e.g. 192.0.2.0/26 or "
                        "2001:db8:1::/64.", "network") from None
    if net.prefixlen < MIN_PREFIX[net.version]:
        raise PoolError(f"{net} is too large: an IPv{net.version} pool is at most a /{MIN_PREFIX[net.version]}.",
                        "network")
    if net.is_loopback or net.is_link_local or net.is_multicast or net.is_unspecified:
        raise PoolError(f"{net} is a loopback, link-local or multicast network; VEs cannot use it.", "network")
    return net


def clean_pool(pool) -> None:
    """Normalise pool's fields, or raise PoolError saying what is wrong (overlaps included)."""
    import re

    from .models import IPPool

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", pool.name or ""):
        raise PoolError("A pool name is letters, digits, spaces, dots, hyphens and underscores (at most 64).",
                        "name")
    net = parse_network(pool.network)
    pool.network, pool.version = str(net), net.version
    if pool.gateway:
        try:
            gw = ipaddress.ip_address(pool.gateway.strip())
        except ValueError:
            raise PoolError(f"Gateway {pool.gateway!r} is not an IP address.", "gateway") from None
        if gw not in net:
            raise PoolError(f"Gateway {gw} is not inside {net}.", "gateway")
        pool.gateway = str(gw)
    servers = pool.nameservers.replace(",", " ").split()
    if len(servers) > MAX_NAMESERVERS:
        raise PoolError(f"At most {MAX_NAMESERVERS} name servers.", "nameservers")
    for i, s in enumerate(servers):
        try:
            servers[i] = str(ipaddress.ip_address(s))
        except ValueError:
            raise PoolError(f"Name server {s!r} is not an IP address.", "nameservers") from None
    pool.nameservers = " ".join(servers)
    for other in IPPool.objects.filter(version=net.version).exclude(pk=pool.pk):
        if ipaddress.ip_network(other.network).overlaps(net):
            raise PoolError(f"{net} overlaps pool {other.name} ({other.network}) of node {other.node.name}.",
                            "network")
    if pool.pk:
        outside = [a.address for a in pool.addresses.all() if ipaddress.ip_address(a.address) not in net]
        if outside:
            raise PoolError(f"Addresses in use ({', '.join(outside[:5])}) would fall outside {net}: remove them "
                            "first.", "network")


def reserved(pool) -> set:
    """Addresses of pool no VE gets: network, broadcast, the gateway (or the first address: the host's)."""
    net = ipaddress.ip_network(pool.network)
    out = {net.network_address}
    if net.version == 4 and net.num_addresses > 2:
        out.add(net.broadcast_address)
    out.add(ipaddress.ip_address(pool.gateway) if pool.gateway else net.network_address + 1)
    return out


def check_address(pool, value: str) -> str:
    """Return value as an address of pool that may go to a VE, or raise PoolError."""
    try:
        addr = ipaddress.ip_address((value or "").strip())
    except ValueError:
        raise PoolError(f"{value!r} is not an IP address.") from None
    net = ipaddress.ip_network(pool.network)
    if addr not in net:
        raise PoolError(f"{addr} is outside pool {pool.name} ({net}).")
    if addr in reserved(pool):
        raise PoolError(f"{addr} is the network, broadcast or gateway address of pool {pool.name}.")
    return str(addr)


def free_addresses(pool, count: int) -> list[str]:
    """The first ``count`` addresses of pool that no VE holds (fewer if the pool is full)."""
    from .models import IPAddress

    net = ipaddress.ip_network(pool.network)
    taken = set(IPAddress.objects.filter(pool__version=net.version).values_list("address", flat=True))
    skip = reserved(pool)
    hosts = (net.network_address + i for i in range(min(net.num_addresses, 1_000_000)))
    return list(itertools.islice((str(a) for a in hosts if a not in skip and str(a) not in taken), count))


def find_pool(node, value: str):
    """The pool of node that holds address value, or raise PoolError."""
    try:
        addr = ipaddress.ip_address((value or "").strip())
    except ValueError:
        raise PoolError(f"{value!r} is not an IP address.") from None
    for pool in node.ip_pools.filter(version=addr.version):
        if addr in ipaddress.ip_network(pool.network):
            return pool
    names = ", ".join(f"{p.name} ({p.network})" for p in node.ip_pools.all()) or "none"
    raise PoolError(f"{addr} is in none of node {node.name}'s pools (pools: {names}).")


# Other apps that hold host ports for SSH forwards (the classroom's students) register a callable returning
# the ports they hold, so every app picks from one set of used ports without knowing the others.
SSH_PORT_HOLDERS: list = []


def used_ssh_ports() -> set[int]:
    """The host ports SSH forwards hold: hosting VEs' and every registered holder's."""
    from .models import IPAddress

    used = set(IPAddress.objects.filter(ssh_port__isnull=False).values_list("ssh_port", flat=True))
    for holder in SSH_PORT_HOLDERS:
        used |= set(holder())
    return used


def free_ssh_port() -> int:
    """A host port for an SSH forward that neither a hosting VE nor a classroom student holds."""
    from .sshforward import ssh_ports

    first, last = ssh_ports()
    used = used_ssh_ports()
    for port in range(first, last + 1):
        if port not in used:
            return port
    raise PoolError(f"No free host port is left for SSH in {first}-{last} (VZPANEL_SSH_PORTS); ask an admin.")
