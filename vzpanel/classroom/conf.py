"""Classroom settings, from the environment (read where used, so tests and benchmarks can set them).

VZPANEL_CLASS_PARALLEL   VEs a bulk job works on at once in the node agent (default 8)
VZPANEL_SSH_PORTS        host ports handed out for students' SSH forwards, FIRST-LAST (default 22000-29999)
VZPANEL_SSH_HOST         host name students connect to with SSH (default: the panel's own host name)
VZPANEL_IDLE_CPU         share of one CPU below which a VE counts as idle (default 0.02)
"""

import os


def parallel() -> int:
    return max(1, min(64, int(os.environ.get("VZPANEL_CLASS_PARALLEL", "8"))))


def ssh_ports() -> tuple[int, int]:
    first, _, last = os.environ.get("VZPANEL_SSH_PORTS", "22000-29999").partition("-")
    return int(first), int(last or first)


def ssh_host() -> str:
    return os.environ.get("VZPANEL_SSH_HOST", "")


def host_address() -> str:
    """The host's first IPv4 address that is not loopback, link-local or on a VE link (vz*), or ""."""
    import ipaddress

    import psutil

    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name.startswith("vz") or name == "lo":
            continue
        for a in addrs:
            if a.family.name == "AF_INET":
                ip = ipaddress.ip_address(a.address)
                if not (ip.is_loopback or ip.is_link_local):
                    return a.address
    return ""


def idle_cpu() -> float:
    return float(os.environ.get("VZPANEL_IDLE_CPU", "0.02"))
