"""Traffic shaping of a VE's host-side interfaces with tc (``vzctl set --rate``), one call per step.

To the VE: an HTB qdisc at the root of each host-side interface, one class at the rate (what the
host sends into a veth is what the VE receives). From the VE: the interface's ingress is
redirected (u32 match-all, mirred) to an ifb device of the VE's own, whose root HTB class has
the rate; a VE with several interfaces shares that one ifb, so its upload limit is one total.
This kernel has no police action and no matchall classifier; HTB, ingress, u32, mirred and ifb
are the pieces found everywhere.
"""

from __future__ import annotations

import json
import re
import subprocess

from .errors import CommandFailed
from .run import run, which

TC = "tc"


def _tc(*args: str, what: str, check: bool = True) -> subprocess.CompletedProcess:
    if which(TC) is None:
        raise CommandFailed("traffic shaping needs tc: apt-get install iproute2")
    return run([TC, *args], what=what, check=check)


def set_egress_rate(dev: str, kbit: int) -> None:
    """Shape what leaves ``dev`` to ``kbit`` kbit/s (HTB, one class; changed in place)."""
    what = f"limit the traffic of {dev}"
    current = _tc("-j", "qdisc", "show", "dev", dev, "root", what=what).stdout
    if '"htb"' not in current or '"handle":"1:"' not in current:
        _tc("qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1", what=what)
    # ~10 ms of traffic at the rate may pass at once (HTB's own default is one MTU: too little
    # for TCP on a fast link to reach the rate, so what it gets at high rates would be less)
    burst = str(max(1600, kbit * 1000 // 8 // 100))
    _tc("class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", f"{kbit}kbit",
        "ceil", f"{kbit}kbit", "burst", burst, "cburst", burst, what=what)


def clear_egress(dev: str) -> None:
    """Remove the root qdisc of ``dev`` (back to the default: no limit)."""
    if '"htb"' in _tc("-j", "qdisc", "show", "dev", dev, "root", what=f"read the qdisc of {dev}").stdout:
        _tc("qdisc", "del", "dev", dev, "root", what=f"remove the traffic limit of {dev}")


def redirect_ingress(dev: str, ifb: str) -> None:
    """Send everything arriving on ``dev`` through ``ifb`` first (idempotent)."""
    what = f"limit the traffic from {dev}"
    filters = _tc("-j", "filter", "show", "dev", dev, "ingress", what=what, check=False).stdout or "[]"
    try:
        has = any(ifb in json.dumps(f) for f in json.loads(filters))
    except ValueError:
        has = False
    if has:
        return
    _tc("qdisc", "del", "dev", dev, "ingress", what=what, check=False)
    _tc("qdisc", "add", "dev", dev, "handle", "ffff:", "ingress", what=what)
    _tc("filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "prio", "1", "u32", "match", "u32", "0",
        "0", "action", "mirred", "egress", "redirect", "dev", ifb, what=what)


def clear_ingress(dev: str) -> None:
    if '"ingress"' in _tc("-j", "qdisc", "show", "dev", dev, "ingress", what=f"read the qdisc of {dev}",
                          check=False).stdout:
        _tc("qdisc", "del", "dev", dev, "ingress", what=f"remove the traffic limit of {dev}")


def egress_kbit(dev: str) -> int | None:
    """The rate of ``dev``'s class 1:1 in kbit/s, None when it has none (for checks and tests)."""
    # Debian 12's tc prints HTB classes as text even with -j: "class htb 1:1 root ... rate 10Mbit"
    out = _tc("class", "show", "dev", dev, what=f"read the traffic limit of {dev}", check=False).stdout or ""
    m = re.search(r"^class htb 1:1 .*?\brate (\d+(?:\.\d+)?)([KMG]?)bit", out, re.MULTILINE)
    if m is None:
        return None
    return round(float(m.group(1)) * {"": 1e-3, "K": 1, "M": 1e3, "G": 1e6}[m.group(2)])
