"""VE resource limits as values: the OpenVZ-like parameters, how each is parsed and checked, and the
node's defaults (vz.conf). Pure data and parsing: applying them is resources.py's and knobs.py's work.

``PARAMS``  our OpenVZ-like parameters: the ``vzctl`` option, the Engine keyword, the key in the
            VE's config, and how a value is parsed and checked.

Every VE has limits: where its config sets none of its own RAM, SWAP, NUMPROC, CPUUNITS or
DISKSPACE, the node's default from vz.conf (``DEFAULT_RAM`` and so on, layout.py) applies. A
VE given ``unlimited`` on purpose keeps the word in its config, so the default does not return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cgroups, validate
from .errors import InvalidInput, Unsupported

if TYPE_CHECKING:
    from .layout import Layout
    from .veconf import VEConfig

UNLIMITED_WORDS = ("unlimited", "max", "none")
_CREATING = "_creating"  # in what check() returns at create: apply() then sets the default disk quota
CFS_PERIOD_US = 100_000
CPUUNITS_DEFAULT = 1000
IOWEIGHT_DEFAULT = 100
# OpenVZ's --ioprio 0..7 (4 is the default) as a proportional I/O weight.
IOPRIO_WEIGHTS = (10, 25, 50, 75, 100, 250, 500, 1000)
PAGE = 4096

# --- host facts -------------------------------------------------------------------------------

def host_memory() -> tuple[int, int]:
    """(RAM, swap) of the host in bytes."""
    ram = swap = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
            elif line.startswith("SwapTotal:"):
                swap = int(line.split()[1]) * 1024
    return ram, swap


def pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 4_194_304

# --- parsing ----------------------------------------------------------------------------------

def is_unlimited(value) -> bool:
    return str(value).strip().lower() in UNLIMITED_WORDS


def _hard(value, what: str) -> str:
    """OpenVZ's BARRIER:LIMIT form: keep the limit (a stock kernel has one value)."""
    s = str(value).strip()
    if ":" in s:
        barrier, _, limit = s.partition(":")
        if not barrier.strip() or not limit.strip():
            raise InvalidInput(f"invalid {what} {value!r}: use VALUE or BARRIER:LIMIT")
        return limit.strip()
    return s


def _integer(value, what: str, lo: int, hi: int, hint: str = "") -> int:
    s = str(value).strip()
    if not s.isdigit():
        raise InvalidInput(f"invalid {what} {value!r}: use a whole number from {lo} to {hi}{hint}")
    n = int(s)
    if not lo <= n <= hi:
        raise InvalidInput(f"invalid {what} {n}: use a whole number from {lo} to {hi}{hint}")
    return n


def parse_ram(value) -> int | None:
    if is_unlimited(value):
        return None
    ram, _ = host_memory()
    return validate.size(value, what="--ram", minimum=16 << 20, maximum=ram)


def parse_swap(value) -> int | None:
    if is_unlimited(value):
        return None
    ram, swap = host_memory()
    return validate.size(value, what="--swap", minimum=0, maximum=ram + swap)


def parse_cpus(value) -> int | None:
    if is_unlimited(value) or str(value).strip() == "0":
        return None
    n = len(cgroups.online_cpus())
    return _integer(value, "--cpus", 1, n, f" (this host has {n} CPUs)")


def parse_cpuunits(value) -> int | None:
    return _integer(value, "--cpuunits", 8, 500_000, f" (default {CPUUNITS_DEFAULT})")


def parse_cpulimit(value) -> int | None:
    s = str(value).strip().rstrip("%").strip()
    if is_unlimited(s) or s == "0":
        return None
    n = len(cgroups.online_cpus())
    return _integer(s, "--cpulimit", 1, 100 * n,
                    f" percent of one CPU, 0 for no limit (this host has {n} CPUs)")


def parse_cpumask(value) -> str | None:
    s = str(value).strip()
    if s.lower() == "all":
        return None
    online = cgroups.online_cpus()
    try:
        cpus = cgroups.parse_cpulist(s)
    except ValueError:
        raise InvalidInput(f"invalid --cpumask {value!r}: use CPU numbers and ranges like 0-1,3, or 'all'") from None
    missing = [c for c in cpus if c not in online]
    if missing:
        raise InvalidInput(f"invalid --cpumask {value!r}: CPU {missing[0]} is not online on this host "
                           f"(online: {cgroups.format_cpulist(online)})")
    return cgroups.format_cpulist(cpus)


def parse_numproc(value) -> int | None:
    s = _hard(value, "--numproc")
    if is_unlimited(s):
        return None
    # Fewer than 8 leaves no room for init, a shell and one command: vzctl exec would fail.
    return _integer(s, "--numproc", 8, pid_max(), " or 'unlimited'")


def parse_diskspace(value) -> int | None:
    s = _hard(value, "--diskspace")
    if is_unlimited(s):
        return None
    return validate.size(s, what="--diskspace", minimum=1 << 20, maximum=1 << 50)


def parse_diskinodes(value) -> None:
    s = _hard(value, "--diskinodes")
    if is_unlimited(s) or s == "0":
        return None
    _integer(s, "--diskinodes", 1, 1 << 40)
    raise Unsupported("--diskinodes cannot be enforced: btrfs allocates inodes on demand and has no "
                      "inode quota (the directory backend has no quota at all); use --diskspace")


def parse_quotaugidlimit(value) -> None:
    s = str(value).strip()
    if s == "0" or is_unlimited(s):
        return None
    _integer(s, "--quotaugidlimit", 0, 1 << 31)
    raise Unsupported("--quotaugidlimit (user and group quotas inside the VE) is not available: "
                      "btrfs has no per-user quota and a VE's root is one btrfs subvolume")


def parse_iolimit(value) -> int | None:
    s = str(value).strip()
    if s.lower().endswith("/s"):
        s = s[:-2]
    if is_unlimited(s) or s == "0":
        return None
    return validate.size(s, what="--iolimit", minimum=64 << 10, maximum=1 << 40)


def parse_iopslimit(value) -> int | None:
    s = str(value).strip()
    if is_unlimited(s) or s == "0":
        return None
    return _integer(s, "--iopslimit", 1, 10_000_000, ", 0 for no limit")


def parse_ioweight(value) -> int | None:
    return _integer(value, "--ioweight", 1, 1000, f" (default {IOWEIGHT_DEFAULT})")


def parse_ioprio(value) -> int | None:
    return IOPRIO_WEIGHTS[_integer(value, "--ioprio", 0, 7, " (default 4)")]


@dataclass(frozen=True)
class Param:
    kwarg: str  # Engine.create / Engine.set keyword, and the vzctl option --<kwarg>
    key: str | None  # key in the VE's config (None: never stored)
    parse: Callable[[object], int | str | None]  # -> stored value, None = no limit
    metavar: str
    help: str


PARAMS = (
    Param("ram", "RAM", parse_ram, "SIZE", "RAM limit, e.g. 512M ('unlimited' removes it)"),
    Param("swap", "SWAP", parse_swap, "SIZE", "swap the VE may use on top of --ram"),
    Param("cpus", "CPUS", parse_cpus, "N", "number of CPUs' worth of time the VE gets (and sees)"),
    Param("cpuunits", "CPUUNITS", parse_cpuunits, "N",
          f"CPU weight relative to other VEs, 8..500000 (default {CPUUNITS_DEFAULT})"),
    Param("cpulimit", "CPULIMIT", parse_cpulimit, "PERCENT", "hard CPU limit in percent of one CPU (0: none)"),
    Param("cpumask", "CPUMASK", parse_cpumask, "CPUS", "CPUs the VE may run on, e.g. 0-1,3 or 'all'"),
    Param("numproc", "NUMPROC", parse_numproc, "N", "maximum number of processes and threads"),
    Param("diskspace", "DISKSPACE", parse_diskspace, "SIZE", "disk space quota, e.g. 5G (btrfs pools)"),
    Param("diskinodes", None, parse_diskinodes, "N", "inode quota (not enforceable on btrfs)"),
    Param("quotaugidlimit", None, parse_quotaugidlimit, "N", "user/group quotas inside the VE (not available)"),
    Param("iolimit", "IOLIMIT", parse_iolimit, "BYTES/S", "disk bandwidth limit for reads and writes (0: none)"),
    Param("iopslimit", "IOPSLIMIT", parse_iopslimit, "N", "disk I/O operations per second limit (0: none)"),
    Param("ioweight", "IOWEIGHT", parse_ioweight, "N", f"proportional I/O weight 1..1000 (default {IOWEIGHT_DEFAULT})"),
    Param("ioprio", "IOWEIGHT", parse_ioprio, "0-7", "OpenVZ I/O priority, 0..7 (sets --ioweight)"),
)
PARAM_BY_KWARG = {p.kwarg: p for p in PARAMS}
KEYS = tuple(dict.fromkeys(p.key for p in PARAMS if p.key))

Limits = dict  # config key -> int | str | None (None: no limit)


# config key -> (vz.conf setting of the node's default, how that setting is checked)
NODE_DEFAULTS: dict[str, tuple[str, Callable[[str, str], int]]] = {
    "RAM": ("DEFAULT_RAM", lambda v, what: validate.size(v, what=what, minimum=16 << 20)),
    "SWAP": ("DEFAULT_SWAP", lambda v, what: validate.size(v, what=what, minimum=0)),
    "NUMPROC": ("DEFAULT_NUMPROC", lambda v, what: _integer(v, what, 8, pid_max(), " or 'unlimited'")),
    "CPUUNITS": ("DEFAULT_CPUUNITS", lambda v, what: _integer(v, what, 8, 500_000)),
    "DISKSPACE": ("DEFAULT_DISKSPACE", lambda v, what: validate.size(v, what=what, minimum=1 << 20)),
}
UNLIMITED = "unlimited"  # stored for a key of NODE_DEFAULTS that the admin lifted on purpose


def node_defaults(layout: Layout, can_quota: bool = True) -> Limits:
    """The limits a VE has where its own config is silent, from vz.conf (or $VZ_DEFAULT_*)."""
    out: Limits = {}
    for key, (setting, parse) in NODE_DEFAULTS.items():
        raw = str(layout.settings.get(setting, "")).strip()
        if not raw or is_unlimited(raw):
            continue
        try:
            out[key] = parse(raw, setting)
        except InvalidInput as e:
            raise InvalidInput(f"{setting}={raw!r} in {layout.root}/vz.conf: {e.message}") from None
    if not can_quota:  # a directory pool has no quota to put a default disk limit in
        out.pop("DISKSPACE", None)
    if "RAM" not in out:  # swap is what a VE may use on top of its RAM: no RAM limit, no swap limit
        out.pop("SWAP", None)
    return out


def limits_of(conf: VEConfig, defaults: Limits | None = None) -> Limits:
    """The VE's limits: its own, else ``defaults`` (the node's); None where there is none."""
    out: Limits = {}
    for key in KEYS:
        raw = conf.get(key)
        if raw and is_unlimited(raw):
            out[key] = None
        elif raw:
            out[key] = raw if key == "CPUMASK" else int(raw)
        else:
            out[key] = (defaults or {}).get(key)
    if out["RAM"] is None:  # swap is counted on top of a RAM limit; without one it is not limited either
        out["SWAP"] = None
    return out


def human_limit(n: int | None) -> str:
    return "unlimited" if n is None else validate.human_size(n)
