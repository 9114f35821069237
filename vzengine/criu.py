"""Find CRIU and check that it is new enough to checkpoint VEs on this kernel.

LXC's ``lxc-checkpoint`` runs ``criu`` by name, so what matters is the ``criu`` found on PATH:
Debian 12's own package (3.17) fails on current kernels and 4.1 cannot dump TCP sockets on
kernels from 6.16, so 4.2 is the minimum. ``scripts/install-criu`` provides it (the
distribution's package where new enough, else a private Debian 13 tree and a wrapper).
"""

from __future__ import annotations

import functools
import re
import subprocess

from .errors import Unsupported
from .run import which

MIN_VERSION = (4, 2)
INSTALL_HINT = "run scripts/install-criu (as root) to install CRIU 4.2 or newer"


@functools.cache
def _probe(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def find() -> str | None:
    """Path of the ``criu`` that LXC will run, or None."""
    return which("criu")


def version() -> tuple[int, ...] | None:
    """Version of that criu as a tuple, or None when it is missing or does not answer."""
    path = find()
    return _probe(path) if path else None


def version_string() -> str:
    v = version()
    return ".".join(map(str, v)) if v else ""


def require() -> str:
    """Return the criu path, or raise Unsupported saying how to get a usable one."""
    path = find()
    if path is None:
        raise Unsupported(f"checkpointing needs CRIU, which is not installed: {INSTALL_HINT}")
    v = _probe(path)
    if v is None:
        raise Unsupported(f"{path} does not run (criu --version failed): {INSTALL_HINT}")
    if v < MIN_VERSION:
        have = ".".join(map(str, v))
        raise Unsupported(f"CRIU {have} at {path} cannot checkpoint VEs on this kernel (4.2 or newer is "
                          f"needed): {INSTALL_HINT}")
    return path
