"""SSH forwards: the host ports they may take, and the host name users put in their ssh line.

Hosting VEs on private pools and classroom students both get one; their used ports are counted together
in vzpanel.nodes.pools.used_ssh_ports.

VZPANEL_SSH_PORTS   host ports handed out for SSH forwards, FIRST-LAST (default 22000-29999)
VZPANEL_SSH_HOST    host name users connect to with SSH (default: the panel's own host name)
"""

from __future__ import annotations

import ipaddress
import os

import psutil


def ssh_ports() -> tuple[int, int]:
    first, _, last = os.environ.get("VZPANEL_SSH_PORTS", "22000-29999").partition("-")
    return int(first), int(last or first)


def host_address() -> str:
    """The host's first IPv4 address that is not loopback, link-local or on a VE link (vz*), or ""."""
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name.startswith("vz") or name == "lo":
            continue
        for a in addrs:
            if a.family.name == "AF_INET":
                ip = ipaddress.ip_address(a.address)
                if not (ip.is_loopback or ip.is_link_local):
                    return a.address
    return ""


def ssh_host(request) -> str:
    """The host name in an ssh line: VZPANEL_SSH_HOST, else the panel's own name.

    Port forwards answer on the host's real addresses, never on its loopback (that stays the host's own),
    so a panel opened at localhost shows the host's first global address instead.
    """
    host = os.environ.get("VZPANEL_SSH_HOST", "") or request.get_host()
    if host.startswith("["):
        host = host[1:].split("]")[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host in ("localhost", "127.0.0.1", "::1"):
        host = host_address() or host
    return host
