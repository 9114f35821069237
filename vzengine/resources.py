"""Resource limits and accounting (issue 4): CPU, memory, processes, disk, I/O.

Two tables drive everything:

``PARAMS``  our OpenVZ-like parameters: the ``vzctl`` option, the Engine keyword, the key in the
            VE's config, and how a value is parsed and checked.
``KNOBS``   each cgroup file a limit lives in, on cgroup v1 and on cgroup v2, the config keys
            it derives from and how its value is computed from them.

At start the knobs become ``lxc.cgroup.*`` (v1) or ``lxc.cgroup2.*`` (v2) lines of the VE's LXC
config, and LXC writes them into the VE's cgroup before init runs. On a running VE the same
values are written into the VE's cgroup files directly. Disk space is a btrfs qgroup limit on
the VE's subvolume, kept whether the VE runs or not. See RESOURCES.md for what each limit does
and which OpenVZ limits a stock kernel cannot enforce.

Every VE has limits: where its config sets none of its own RAM, SWAP, NUMPROC, CPUUNITS or
DISKSPACE, the node's default from vz.conf (``DEFAULT_RAM`` and so on, layout.py) applies. A
VE given ``unlimited`` on purpose keeps the word in its config, so the default does not return.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import accounting, cgroups, lxcfs, validate
from .errors import CommandFailed, InvalidInput, Unsupported
from .features import Feature
from .run import run

if TYPE_CHECKING:
    from .engine import Engine
    from .layout import Layout
    from .rollback import Rollback
    from .veconf import VEConfig

log = logging.getLogger(__name__)

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


def _whole_disk(sysdir: Path) -> str | None:
    """major:minor of the block device at ``sysdir``, or of its disk if it is a partition."""
    try:
        sysdir = sysdir.resolve()
        if (sysdir / "partition").exists():
            sysdir = sysdir.parent
        return (sysdir / "dev").read_text().strip()
    except OSError:
        return None


def pool_block_devices(engine: Engine) -> list[str]:
    """major:minor of the block devices the pool's file system lives on (throttling targets)."""
    pool = engine.layout.pool
    if engine.storage.kind.startswith("btrfs"):
        fsid = accounting.btrfs_fsid(pool)
        devdir = Path("/sys/fs/btrfs") / str(fsid) / "devices"
        if fsid is None or not devdir.is_dir():
            return []
        return sorted({d for p in devdir.iterdir() if (d := _whole_disk(p))})
    st = os.stat(pool)
    if os.major(st.st_dev) == 0:  # tmpfs, overlay, NFS...: no block device to throttle
        return []
    d = _whole_disk(Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
    return [d] if d else []


# --- parsing ----------------------------------------------------------------------------------

def _unlimited(value) -> bool:
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
    if _unlimited(value):
        return None
    ram, _ = host_memory()
    return validate.size(value, what="--ram", minimum=16 << 20, maximum=ram)


def parse_swap(value) -> int | None:
    if _unlimited(value):
        return None
    ram, swap = host_memory()
    return validate.size(value, what="--swap", minimum=0, maximum=ram + swap)


def parse_cpus(value) -> int | None:
    if _unlimited(value) or str(value).strip() == "0":
        return None
    n = len(cgroups.online_cpus())
    return _integer(value, "--cpus", 1, n, f" (this host has {n} CPUs)")


def parse_cpuunits(value) -> int | None:
    return _integer(value, "--cpuunits", 8, 500_000, f" (default {CPUUNITS_DEFAULT})")


def parse_cpulimit(value) -> int | None:
    s = str(value).strip().rstrip("%").strip()
    if _unlimited(s) or s == "0":
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
    if _unlimited(s):
        return None
    # Fewer than 8 leaves no room for init, a shell and one command: vzctl exec would fail.
    return _integer(s, "--numproc", 8, pid_max(), " or 'unlimited'")


def parse_diskspace(value) -> int | None:
    s = _hard(value, "--diskspace")
    if _unlimited(s):
        return None
    return validate.size(s, what="--diskspace", minimum=1 << 20, maximum=1 << 50)


def parse_diskinodes(value) -> None:
    s = _hard(value, "--diskinodes")
    if _unlimited(s) or s == "0":
        return None
    _integer(s, "--diskinodes", 1, 1 << 40)
    raise Unsupported("--diskinodes cannot be enforced: btrfs allocates inodes on demand and has no "
                      "inode quota (the directory backend has no quota at all); use --diskspace")


def parse_quotaugidlimit(value) -> None:
    s = str(value).strip()
    if s == "0" or _unlimited(s):
        return None
    _integer(s, "--quotaugidlimit", 0, 1 << 31)
    raise Unsupported("--quotaugidlimit (user and group quotas inside the VE) is not available: "
                      "btrfs has no per-user quota and a VE's root is one btrfs subvolume")


def parse_iolimit(value) -> int | None:
    s = str(value).strip()
    if s.lower().endswith("/s"):
        s = s[:-2]
    if _unlimited(s) or s == "0":
        return None
    return validate.size(s, what="--iolimit", minimum=64 << 10, maximum=1 << 40)


def parse_iopslimit(value) -> int | None:
    s = str(value).strip()
    if _unlimited(s) or s == "0":
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


# --- the cgroup mapping table -------------------------------------------------------------------

Limits = dict  # config key -> int | str | None (None: no limit)


@dataclass
class Context:
    """What knob values depend on besides the limits: the pool's block devices."""

    engine: Engine
    _devices: list[str] | None = None

    @property
    def devices(self) -> list[str]:
        if self._devices is None:
            self._devices = pool_block_devices(self.engine)
        return self._devices


def cpu_percent(lim: Limits) -> int | None:
    """The VE's CFS quota in percent of one CPU: the tighter of --cpulimit and --cpus."""
    caps = [v for v in (lim.get("CPULIMIT"), lim["CPUS"] * 100 if lim.get("CPUS") else None) if v]
    return min(caps) if caps else None


def _mem_v1(lim, ctx):
    return [str(lim["RAM"]) if lim.get("RAM") else "-1"]


def _mem_v2(lim, ctx):
    return [str(lim["RAM"]) if lim.get("RAM") else "max"]


def _memsw_v1(lim, ctx):  # v1 limits RAM + swap together
    ok = lim.get("RAM") and lim.get("SWAP") is not None
    return [str(lim["RAM"] + lim["SWAP"]) if ok else "-1"]


def _swap_v2(lim, ctx):  # v2 limits swap alone
    ok = lim.get("RAM") and lim.get("SWAP") is not None
    return [str(lim["SWAP"]) if ok else "max"]


def _shares_v1(lim, ctx):
    units = lim.get("CPUUNITS") or CPUUNITS_DEFAULT
    return [str(max(2, min(262_144, units * 1024 // 1000)))]


def _weight_v2(lim, ctx):
    units = lim.get("CPUUNITS") or CPUUNITS_DEFAULT
    return [str(max(1, min(10_000, round(units / 10))))]


def _period_v1(lim, ctx):
    return [str(CFS_PERIOD_US)]


def _quota_v1(lim, ctx):
    pct = cpu_percent(lim)
    return [str(pct * CFS_PERIOD_US // 100) if pct else "-1"]


def _cpumax_v2(lim, ctx):
    pct = cpu_percent(lim)
    return [f"{pct * CFS_PERIOD_US // 100 if pct else 'max'} {CFS_PERIOD_US}"]


def _cpuset(lim, ctx):
    return [lim.get("CPUMASK") or cgroups.format_cpulist(cgroups.online_cpus())]


def _pids(lim, ctx):
    return [str(lim["NUMPROC"]) if lim.get("NUMPROC") else "max"]


def _throttle_v1(key):
    def value(lim, ctx):
        return [f"{dev} {lim.get(key) or 0}" for dev in ctx.devices]  # 0 removes the rule
    return value


def _iomax_v2(lim, ctx):
    bps, iops = lim.get("IOLIMIT") or "max", lim.get("IOPSLIMIT") or "max"
    return [f"{dev} rbps={bps} wbps={bps} riops={iops} wiops={iops}" for dev in ctx.devices]


def _ioweight(lim, ctx):
    return [str(lim.get("IOWEIGHT") or IOWEIGHT_DEFAULT)]


@dataclass(frozen=True)
class Knob:
    controller: str
    keys: tuple[str, ...]  # config keys it derives from
    v1: str | None  # file on a cgroup v1 hierarchy (None: not there)
    v1_value: Callable | None
    v2: str | None  # file on the unified hierarchy
    v2_value: Callable | None
    probe: Callable[[], bool] | None = None  # does the kernel have it? (None: yes)
    per_device: bool = False  # one line per block device (the file lists only devices with a rule)

    def file(self, ver: int) -> str | None:
        return self.v1 if ver == 1 else self.v2

    def values(self, ver: int, lim: Limits, ctx: Context) -> list[str]:
        fn = self.v1_value if ver == 1 else self.v2_value
        return fn(lim, ctx) if fn else []


def _bfq() -> bool:
    """Whether the BFQ I/O scheduler's cgroup files exist (its weight is the only I/O weight left)."""
    if cgroups.version("blkio") == 1:
        return cgroups.has_file("blkio", "blkio.bfq.io_service_bytes")
    return cgroups.has_file("io", "io.bfq.weight")


KNOBS = (
    Knob("memory", ("RAM",), "memory.limit_in_bytes", _mem_v1, "memory.max", _mem_v2),
    Knob("memory", ("RAM", "SWAP"), "memory.memsw.limit_in_bytes", _memsw_v1, "memory.swap.max", _swap_v2,
         probe=cgroups.swap_accounting),
    Knob("cpu", ("CPUUNITS",), "cpu.shares", _shares_v1, "cpu.weight", _weight_v2),
    Knob("cpu", ("CPULIMIT", "CPUS"), "cpu.cfs_period_us", _period_v1, None, None),
    Knob("cpu", ("CPULIMIT", "CPUS"), "cpu.cfs_quota_us", _quota_v1, "cpu.max", _cpumax_v2),
    Knob("cpuset", ("CPUMASK",), "cpuset.cpus", _cpuset, "cpuset.cpus", _cpuset),
    Knob("pids", ("NUMPROC",), "pids.max", _pids, "pids.max", _pids),
    Knob("blkio", ("IOLIMIT",), "blkio.throttle.read_bps_device", _throttle_v1("IOLIMIT"), None, None, per_device=True),
    Knob("blkio", ("IOLIMIT",), "blkio.throttle.write_bps_device", _throttle_v1("IOLIMIT"), None, None, per_device=True),
    Knob("blkio", ("IOPSLIMIT",), "blkio.throttle.read_iops_device", _throttle_v1("IOPSLIMIT"), None, None, per_device=True),
    Knob("blkio", ("IOPSLIMIT",), "blkio.throttle.write_iops_device", _throttle_v1("IOPSLIMIT"), None, None, per_device=True),
    Knob("io", ("IOLIMIT", "IOPSLIMIT"), None, None, "io.max", _iomax_v2, per_device=True),
    # Proportional I/O weight works only where the device uses the BFQ scheduler.
    Knob("blkio", ("IOWEIGHT",), "blkio.bfq.weight", _ioweight, None, None, probe=_bfq),
    Knob("io", ("IOWEIGHT",), None, None, "io.bfq.weight", _ioweight, probe=_bfq),
)


def knob_version(knob: Knob) -> int | None:
    """The cgroup version the knob applies to on this host, or None when it does not apply."""
    ver = cgroups.version(knob.controller)
    if ver is None or knob.file(ver) is None:
        return None
    if knob.probe is not None and not knob.probe():
        return None
    return ver


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
        if not raw or _unlimited(raw):
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
        if raw and _unlimited(raw):
            out[key] = None
        elif raw:
            out[key] = raw if key == "CPUMASK" else int(raw)
        else:
            out[key] = (defaults or {}).get(key)
    if out["RAM"] is None:  # swap is counted on top of a RAM limit; without one it is not limited either
        out["SWAP"] = None
    return out


def _human(n: int | None) -> str:
    return "unlimited" if n is None else validate.human_size(n)


# --- the feature ------------------------------------------------------------------------------

class ResourcesFeature(Feature):
    name = "resources"
    params = tuple(p.kwarg for p in PARAMS)

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self._reader: accounting.UsageReader | None = None

    def defaults(self) -> Limits:
        """The node's default limits (vz.conf), read anew each time: an edit applies at the next start."""
        return node_defaults(self.engine.layout, can_quota=self.engine.storage.can_quota)

    def limits(self, conf: VEConfig) -> Limits:
        """The limits in effect for the VE: its own where it has them, the node's defaults elsewhere."""
        return limits_of(conf, self.defaults())

    @property
    def reader(self) -> accounting.UsageReader:
        if self._reader is None:
            self._reader = accounting.UsageReader(self.engine.layout, quota=self.engine.storage.can_quota)
        return self._reader

    # --- validation -----------------------------------------------------------------------
    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        if "ioweight" in params and "ioprio" in params:
            raise InvalidInput("give either --ioweight or --ioprio, not both")
        out: dict = {}
        for kwarg, value in params.items():
            if value is None:
                continue
            p = PARAM_BY_KWARG[kwarg]
            parsed = p.parse(value)
            if p.key:
                out[p.key] = parsed
        if creating:
            out[_CREATING] = True
        if not out.keys() - {_CREATING}:
            return out
        new = {**self.limits(conf), **out}
        if out.get("SWAP") is not None and not new.get("RAM"):
            raise InvalidInput("--swap needs a --ram limit: swap is what a VE may use on top of its RAM")
        if "DISKSPACE" in out and not self.engine.storage.can_quota:
            raise Unsupported(f"disk quota is not available with STORAGE={self.engine.layout.storage}: "
                              "use a btrfs pool for --diskspace")
        if out.get("IOLIMIT") or out.get("IOPSLIMIT"):
            self.engine.ensure_ready()  # the pool must be mounted to find its devices
            if cgroups.version("blkio") is None and cgroups.version("io") is None:
                raise Unsupported("this kernel has no block I/O cgroup controller for --iolimit/--iopslimit")
            if not pool_block_devices(self.engine):
                raise Unsupported(f"the pool {self.engine.layout.pool} is not on a block device, so its I/O "
                                  "cannot be throttled")
        if not creating:
            self._check_usage(conf, out, self.engine.is_running(conf.ctid))
        return out

    def _check_usage(self, conf: VEConfig, new: dict, running: bool) -> None:
        """Refuse limits below what the VE already uses, where lowering cannot work."""
        ctid = conf.ctid
        if new.get("NUMPROC") and running:
            n = self.engine.nproc(ctid) or 0
            if new["NUMPROC"] < n:
                raise InvalidInput(f"VE {ctid} runs {n} processes and threads; --numproc {new['NUMPROC']} "
                                   "is below that: stop some first")
        if new.get("RAM") and running and cgroups.version("memory") == 2:
            # v2 does not refuse a memory.max below usage: it OOM-kills. Refuse it here instead.
            stat = cgroups.flat_keyed(cgroups.read("memory", self.engine.layout.cgroup_dir(ctid), "memory.stat"))
            pinned = stat.get("anon", 0) + stat.get("shmem", 0) + stat.get("kernel", 0)
            swap = (new.get("SWAP") or 0) if cgroups.swap_accounting() else 0
            if new["RAM"] + swap < pinned:
                raise InvalidInput(f"VE {ctid} holds {validate.human_size(pinned)} of memory that cannot be "
                                   f"reclaimed below {validate.human_size(new['RAM'])}: stop some of its "
                                   "processes or choose a higher limit")
        if new.get("DISKSPACE") and self.engine.storage.can_quota and self.engine.layout.private(ctid).is_dir():
            used = self.disk_used(ctid, fresh=True)
            if used is not None and new["DISKSPACE"] < used:
                raise InvalidInput(f"VE {ctid} already uses {validate.human_size(used)} of disk; "
                                   f"--diskspace {validate.human_size(new['DISKSPACE'])} is below that: "
                                   "free some space first")

    # --- applying -------------------------------------------------------------------------
    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        params = dict(params)
        creating = params.pop(_CREATING, False)
        old = self.limits(conf)
        new = {**old, **params}
        if params:
            self._check_usage(conf, params, running)  # again, under the VE's lock
        if "DISKSPACE" in params:
            self._set_quota(conf.ctid, new["DISKSPACE"], rb)
        elif creating and new["DISKSPACE"] and self.engine.storage.can_quota:
            if self.reader.qgroups() is None:  # the node's default, on a pool without quota: no limit to set
                log.warning("quota is off on the pool %s: VE %s gets no disk limit", self.engine.layout.pool,
                            conf.ctid)
            else:
                self._set_quota(conf.ctid, new["DISKSPACE"], rb)
        if running and params:
            self._write_live(conf.ctid, old, new, set(params), rb)
        for key, value in params.items():
            # "unlimited" is kept where a node default exists, or the default would apply again.
            conf.set(key, UNLIMITED if value is None and key in NODE_DEFAULTS else value)

    def _write_live(self, ctid: int, old: Limits, new: Limits, changed: set[str], rb: Rollback) -> None:
        rel = self.engine.layout.cgroup_dir(ctid)
        ctx = Context(self.engine)
        writes: list[tuple[Knob, int, list[str], list[str]]] = []
        for knob in KNOBS:
            ver = knob_version(knob)
            if ver is None or not changed & set(knob.keys):
                continue
            name = knob.file(ver)
            if knob.per_device:  # the file lists only devices with a rule: undo from the table
                undo = knob.values(ver, old, ctx)
            else:  # undo to what is live now (a change made without --save may differ from the config)
                cur = cgroups.read(knob.controller, rel, name)
                undo = [cur] if cur is not None else []
            writes.append((knob, ver, knob.values(ver, new, ctx), undo))
        if self._memsw_first(rel, writes):
            writes.sort(key=lambda w: w[0].file(w[1]) != "memory.memsw.limit_in_bytes")
        for knob, ver, values, undo in writes:
            name = knob.file(ver)
            # Registered first: a write that fails half-way (one device of several) is undone too.
            rb.add(f"restore {name} of VE {ctid}",
                   lambda k=knob, n=name, u=undo: [cgroups.write(k.controller, rel, n, v) for v in u])
            for value in values:
                self._write(ctid, knob.controller, rel, name, value, new)

    @staticmethod
    def _memsw_first(rel: str, writes: list) -> bool:
        """On v1, RAM+swap must never be below RAM: grow memsw first when the live RAM limit needs it."""
        new = {w[0].file(w[1]): w[2][0] for w in writes if w[2]}
        memsw = new.get("memory.memsw.limit_in_bytes")
        if memsw is None:
            return False
        live_limit = accounting._int(cgroups.read("memory", rel, "memory.limit_in_bytes"))
        memsw_n = accounting._int(memsw) if memsw != "-1" else None
        return memsw_n is None or (live_limit is not None and memsw_n >= live_limit)

    def _write(self, ctid: int, controller: str, rel: str, name: str, value: str, new: Limits) -> None:
        try:
            cgroups.write(controller, rel, name, value)
        except OSError as e:
            if e.errno == errno.EBUSY and name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                used = accounting._int(cgroups.read("memory", rel, "memory.usage_in_bytes"))
                raise InvalidInput(
                    f"VE {ctid} uses {_human(used)} of memory that the kernel could not reclaim below "
                    f"{_human(new.get('RAM'))} (+ swap {_human(new.get('SWAP'))}): stop some of its "
                    "processes or choose a higher limit") from None
            raise CommandFailed(f"cannot set {name} of VE {ctid} to {value}: {e.strerror}") from None

    # --- disk quota -----------------------------------------------------------------------
    def disk_used(self, ctid: int, fresh: bool = False) -> int | None:
        """Bytes the VE's subvolume references; ``fresh`` commits pending writes first (slower)."""
        if not self.engine.storage.can_quota:
            return None
        private = self.engine.layout.private(ctid)
        if fresh:
            run(["btrfs", "filesystem", "sync", str(private)], what="sync the pool")
        return accounting.disk_usage(self.reader.qgroups(), private)[0]

    def _quota_limit(self, ctid: int) -> int | None:
        return accounting.disk_usage(self.reader.qgroups(), self.engine.layout.private(ctid))[1]

    def _set_quota(self, ctid: int, limit: int | None, rb: Rollback | None = None) -> None:
        private = self.engine.layout.private(ctid)
        if self.reader.qgroups() is None:
            raise Unsupported(f"quota is not enabled on the pool {self.engine.layout.pool}: "
                              f"run 'btrfs quota enable {self.engine.layout.pool}' first")
        before = self._quota_limit(ctid)
        run(["btrfs", "qgroup", "limit", str(limit) if limit else "none", str(private)],
            what=f"set the disk quota of VE {ctid}")
        if rb is not None:
            rb.add(f"restore the disk quota of VE {ctid}",
                   lambda: run(["btrfs", "qgroup", "limit", str(before) if before else "none", str(private)],
                               what=f"restore the disk quota of VE {ctid}"))

    # --- start / stop ---------------------------------------------------------------------
    def before_start(self, conf: VEConfig) -> None:
        # lxcfs must serve /var/lib/lxcfs before LXC's mount hook binds it into the VE.
        if lxcfs.ensure(self.engine.layout) == "unavailable":
            log.warning("lxcfs is not available: VE %s will see the host's /proc/meminfo and cpuinfo",
                        conf.ctid)

    def lxc_config(self, conf: VEConfig) -> list[str]:
        lim = self.limits(conf)
        ctx = Context(self.engine)
        lines = []
        for knob in KNOBS:
            ver = knob_version(knob)
            if ver is None or all(lim.get(k) is None for k in knob.keys):
                continue
            prefix = "lxc.cgroup" if ver == 1 else "lxc.cgroup2"
            lines += [f"{prefix}.{knob.file(ver)} = {v}" for v in knob.values(ver, lim, ctx)]
        return lines

    def after_start(self, conf: VEConfig) -> None:
        # A quota set without --save lasts until the next start: bring it back to the config.
        if self.engine.storage.can_quota and self.reader.qgroups() is not None:
            want = self.limits(conf)["DISKSPACE"]
            if self._quota_limit(conf.ctid) != want:
                self._set_quota(conf.ctid, want)

    def purge(self) -> None:
        lxcfs.stop(self.engine.layout)

    # --- accounting -----------------------------------------------------------------------
    def usage(self, conf: VEConfig) -> dict:
        """Usage of one VE (cpu seconds, memory bytes, nproc, disk bytes, ...): Engine.usage()."""
        return self.reader.read(conf.ctid)

    def usage_all(self) -> dict[int, dict]:
        """Usage of every VE of the root, read in one pass (cheap enough to poll each second)."""
        return self.reader.read_all()

    def info(self, conf: VEConfig, running: bool) -> dict:
        own = {key for key in KEYS if conf.get(key)}
        lim = self.limits(conf)
        return {"resources": {"limits": lim, "usage": self.reader.read(conf.ctid),
                              "node_defaults": sorted(k for k in NODE_DEFAULTS if k not in own and lim[k] is not None)}}

    def beancounters(self, ctid: int) -> list[dict]:
        conf = self.engine.config(ctid)
        return beancounters(self.reader.read(conf.ctid), self.limits(conf))


# --- vzctl ubc ----------------------------------------------------------------------------------

NA = "n/a"  # the kernel neither counts nor limits this per VE

# OpenVZ beancounters a stock kernel cannot enforce per VE, and why (also in RESOURCES.md).
NOT_ENFORCEABLE = {
    "lockedpages": "mlock()ed memory is limited per process (RLIMIT_MEMLOCK), not per cgroup",
    "privvmpages": "no per-cgroup limit on allocated virtual memory; overcommit is host-wide",
    "vmguarpages": "no memory guarantee in a stock kernel (memory.low is best effort, v2 only)",
    "numtcpsock": "sockets are not counted per cgroup",
    "numothersock": "sockets are not counted per cgroup",
    "tcpsndbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "tcprcvbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "othersockbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "dgramrcvbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "numflock": "file locks are not counted per cgroup",
    "numpty": "no per-cgroup count; LXC caps each VE's devpts at lxc.pty.max",
    "numsiginfo": "pending signals are limited per user (RLIMIT_SIGPENDING), not per cgroup",
    "dcachesize": "dentry cache is charged to RAM as kernel memory, not limited apart",
    "numfile": "open files are limited per process (RLIMIT_NOFILE), not per cgroup",
    "numiptent": "each VE has its own netfilter tables, but no limit on their size",
}


def _pages(n):
    return None if n is None else n // PAGE


def beancounters(u: dict, lim: Limits) -> list[dict]:
    """OpenVZ-style rows: resource, held, maxheld, barrier, limit, failcnt.

    A number, None for "no limit" (barrier/limit) or "unknown", or NA where a stock kernel
    cannot count or enforce it. Units as OpenVZ: pages (4 KiB) for *pages, bytes for kmemsize,
    1 KiB blocks for diskspace, seconds for cpu, bytes for iobytes.
    """
    swap_lim = lim.get("SWAP") if lim.get("RAM") else None

    def row(resource, held, maxheld, barrier, limit, failcnt):
        return {"resource": resource, "held": held, "maxheld": maxheld, "barrier": barrier,
                "limit": limit, "failcnt": failcnt}

    mem_limit = lim.get("RAM")

    def kblocks(n):
        return None if n is None else n // 1024

    rows = [
        row("kmemsize", u.get("kmem_bytes"), u.get("kmem_peak_bytes"), NA, NA, NA),
        row("lockedpages", NA, NA, NA, NA, NA),
        row("privvmpages", NA, NA, NA, NA, NA),
        row("shmpages", _pages(u.get("memory_shmem_bytes")), NA, NA, NA, NA),
        row("numproc", u.get("nproc") or 0, u.get("nproc_peak"), lim.get("NUMPROC"), lim.get("NUMPROC"),
            u.get("nproc_failcnt") or 0),
        row("physpages", _pages(u.get("memory_bytes")) or 0, _pages(u.get("memory_peak_bytes")),
            _pages(mem_limit), _pages(mem_limit), u.get("memory_failcnt") or 0),
        row("vmguarpages", NA, NA, NA, NA, NA),
        row("oomguarpages", _pages(u.get("memory_bytes")) or 0, _pages(u.get("memory_peak_bytes")), NA, NA,
            u.get("oom_kills") or 0),
        row("swappages", _pages(u.get("swap_bytes")), _pages(u.get("swap_peak_bytes")),
            _pages(swap_lim), _pages(swap_lim), u.get("swap_failcnt") if cgroups.swap_accounting() else NA),
    ]
    for name in ("numtcpsock", "numflock", "numpty", "numsiginfo", "tcpsndbuf", "tcprcvbuf",
                 "othersockbuf", "dgramrcvbuf", "numothersock", "dcachesize", "numfile", "numiptent"):
        rows.append(row(name, NA, NA, NA, NA, NA))
    rows += [
        row("diskspace", kblocks(u.get("disk_bytes")), NA, kblocks(lim.get("DISKSPACE")),
            kblocks(lim.get("DISKSPACE")), NA),
        row("diskinodes", NA, NA, NA, NA, NA),
        row("cpu", round(u["cpu_seconds"]) if u.get("cpu_seconds") is not None else 0, NA,
            NA, cpu_percent(lim), u.get("cpu_throttled") or 0),
        row("iobytes", (u.get("io_read_bytes") or 0) + (u.get("io_write_bytes") or 0), NA,
            NA, lim.get("IOLIMIT"), NA),
    ]
    return rows


OPENVZ_UNLIMITED = 9223372036854775807
HUMAN_BYTES = {"kmemsize": 1, "shmpages": PAGE, "physpages": PAGE, "oomguarpages": PAGE, "swappages": PAGE,
               "diskspace": 1024, "iobytes": 1}


def format_beancounters(ctid: int, rows: list[dict], human: bool = False) -> str:
    cols = ("held", "maxheld", "barrier", "limit", "failcnt")

    def cell(r, col):
        v = r[col]
        if v == NA:
            return NA
        if v is None:
            if col in ("barrier", "limit"):
                return "unlimited" if human else str(OPENVZ_UNLIMITED)
            return "-"
        if human and col != "failcnt" and r["resource"] in HUMAN_BYTES:
            return validate.human_size(v * HUMAN_BYTES[r["resource"]])
        return str(v)

    lines = [f"{'uid':>10}  {'resource':<13}" + "".join(f"{c:>20}" for c in cols)]
    for i, r in enumerate(rows):
        lead = f"{ctid:>9}:" if i == 0 else " " * 10
        lines.append(f"{lead}  {r['resource']:<13}" + "".join(f"{cell(r, c):>20}" for c in cols))
    return "\n".join(lines)


# --- vzctl / vzlist integration -----------------------------------------------------------------

def add_set_options(parser) -> None:
    group = parser.add_argument_group("resource limits (OpenVZ-style; live on a running VE)")
    for p in PARAMS:
        group.add_argument(f"--{p.kwarg}", default=None, metavar=p.metavar, help=p.help)


def set_params(args) -> dict:
    params = {p.kwarg: getattr(args, p.kwarg, None) for p in PARAMS}
    if params.get("swap") is not None and not _unlimited(params["swap"]) and not cgroups.swap_accounting():
        print("vzctl: warning: this kernel does not account swap per cgroup (boot with swapaccount=1): "
              "--swap is saved but not enforced", file=sys.stderr)
    return params


def register_commands(subparsers) -> None:
    s = subparsers.add_parser("ubc", help="show a VE's resource usage and limits (OpenVZ beancounters)")
    s.add_argument("ctid", nargs="+")
    s.add_argument("-H", "--human", action="store_true", help="sizes in K/M/G instead of OpenVZ's units")


def run_command(eng, args, progress) -> int | None:
    if args.command != "ubc":
        return None
    feature = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    out = []
    for ctid in args.ctid:
        conf = eng.config(ctid)
        out.append(format_beancounters(conf.ctid, feature.beancounters(conf.ctid), human=args.human))
    print("\n".join(out))
    if not args.human:
        print("# units: *pages in 4 KiB pages, kmemsize and iobytes in bytes, diskspace in 1 KiB blocks, "
              "cpu in seconds (limit: percent of one CPU; failcnt: times throttled); n/a: a stock kernel "
              "cannot count or limit it per VE")
    return 0


def _res(i) -> dict:
    return i.extra.get("resources") or {"limits": {}, "usage": {}}


def _used_of(i, used_key: str, limit_key: str) -> str:
    r = _res(i)
    used, limit = r["usage"].get(used_key), r["limits"].get(limit_key)
    u = validate.human_size(used) if used is not None else "-"
    return f"{u}/{validate.human_size(limit) if limit else 'unlim'}"


def _cpu_time(i) -> str:
    s = _res(i)["usage"].get("cpu_seconds")
    return "-" if s is None else f"{s:.1f}s"


def _limit(key: str, fmt: Callable = str) -> Callable:
    def get(i):
        v = _res(i)["limits"].get(key)
        return "-" if v is None else fmt(v)
    return get


VZLIST_FIELDS = {
    "ram": ("RAM", 15, lambda i: _used_of(i, "memory_bytes", "RAM")),
    "swap": ("SWAP", 15, lambda i: _used_of(i, "swap_bytes", "SWAP")),
    "diskspace": ("DISKSPACE", 15, lambda i: _used_of(i, "disk_bytes", "DISKSPACE")),
    "cpu": ("CPU", 9, _cpu_time),
    "cpus": ("CPUS", 4, _limit("CPUS")),
    "cpulimit": ("CPULIM", 6, _limit("CPULIMIT", lambda v: f"{v}%")),
    "cpuunits": ("CPUUNITS", 8, _limit("CPUUNITS")),
    "cpumask": ("CPUMASK", 7, _limit("CPUMASK")),
    "numproc.l": ("NPROC.L", 7, _limit("NUMPROC")),
    "iolimit": ("IOLIMIT", 8, _limit("IOLIMIT", validate.human_size)),
    "oomkills": ("OOMKILLS", 8, lambda i: _res(i)["usage"].get("oom_kills") or 0),
}

