"""The cgroup mapping table: each cgroup file a limit lives in, on cgroup v1 and on cgroup v2, the
config keys it derives from and how its value is computed from them (``KNOBS``).

At start the knobs become ``lxc.cgroup.*`` (v1) or ``lxc.cgroup2.*`` (v2) lines of the VE's LXC
config; on a running VE resources.py writes the same values into the VE's cgroup files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import cgroups
from .limits import CFS_PERIOD_US, CPUUNITS_DEFAULT, IOWEIGHT_DEFAULT, Limits

if TYPE_CHECKING:
    from .engine import Engine



@dataclass
class Context:
    """What knob values depend on besides the limits: the pool's block devices."""

    engine: Engine
    _devices: list[str] | None = None

    @property
    def devices(self) -> list[str]:
        if self._devices is None:
            self._devices = self.engine.storage.block_devices()
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
