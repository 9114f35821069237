"""One sampling pass over a node's VEs and the host, in the node agent (root): the `metrics_sample` operation.

Runs in the node agent (vzpanel/agent/ops.py's `metrics_sample` calls `sampler_for(root).sample`), which hands
it the engine (for its layout and VE ids) and the engine's path functions. It reads the few kernel files a graph
needs, not the ~20 of `Engine.usage` (bench/metrics_bench.py measures the difference):

| value | file (cgroup v1 / v2) |
| --- | --- |
| CPU | cpuacct.usage / cpu.stat usage_usec: cumulative, so a rate needs two readings |
| memory | memory.usage_in_bytes / memory.current (what `Engine.usage` reports as memory_bytes) |
| processes | pids.current (missing: the VE is not running) |
| disk | btrfs qgroup `referenced` in sysfs (the subvolume id is looked up once per VE and cached) |
| network | the host-side veth's tx_bytes / rx_bytes (the VE's in / out), and its ifindex |

Rates across restarts: each reading carries the identity of what it counts (the VE cgroup directory's inode
for CPU, the veth's ifindex for traffic). When it changed since the previous pass, the counter started at zero
after that pass (the old run was alive then, or the VE was not running), so the whole new value is the
interval's use. A counter that went down is treated the same way. Without any previous reading (the agent's
first pass, or a VE seen for the first time) there is no rate, and the VE's sample is left out of that pass.

Everything read here comes from cgroup, sysfs and /proc files the kernel writes, never from a VE's own tree;
only numbers are taken from them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .cgroups import read_fast as _read
from .layout import Layout

if TYPE_CHECKING:
    from .engine import Engine


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """The number of ``key value`` line ``key`` (cpu.stat)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value)
    return None


@dataclass
class Reading:
    """Cumulative counters of one VE at one moment, with what they count (so a restart is noticed)."""

    at: float  # time.monotonic()
    cpu_run: int | None = None  # inode of the VE's cpu cgroup directory: a new one at each start
    cpu_ns: int | None = None
    net_run: int | None = None  # the veth's ifindex: a new veth at each start
    net_in: int | None = None
    net_out: int | None = None


def rate(now: float, prev: Reading | None, run: int | None, value: int | None, prev_run: int | None,
         prev_value: int | None) -> float | None:
    """Units per second between two readings; a new run (or a counter that went down) counts from zero.

    None when there is no previous reading or no value now.
    """
    if prev is None or value is None:
        return None
    elapsed = now - prev.at
    if elapsed <= 0:
        return None
    if prev_value is None or run != prev_run or value < prev_value:
        return value / elapsed  # started after the previous pass: all of it is this interval's
    return (value - prev_value) / elapsed


class VESample(TypedDict):
    """One VE's values in a pass: rates over the interval, the rest as they are now."""

    cpu: int  # milli-CPUs
    mem: int | None
    disk: int | None
    net_in: int  # bytes per second
    net_out: int
    nproc: int


class Sampler:
    """Keeps the previous pass's counters of one engine root between calls (the agent is long-lived)."""

    def __init__(self) -> None:
        self.prev: dict[int, Reading] = {}
        self.host_prev: tuple[float, int, int] | None = None  # (monotonic, busy jiffies, total jiffies)
        self.last_slot: int | None = None
        self.subvol: dict[int, int] = {}  # ctid -> btrfs subvolume id
        self.lock = threading.Lock()

    def sample(self, engine: Engine, cgroup_path: Callable[[str, str], Path | None], interval: int = 10,
               subvolume_id: Callable[[Path], int | None] | None = None,
               qgroups: Callable[[], Path | None] | None = None,
               ifname: Callable[[int], str] | None = None) -> dict[str, Any]:
        """Sample every VE of ``engine`` and the host once; return {"ts", "interval", "ves", "node"}.

        ``ts`` is the start of the ``interval``-second slot the pass falls in; a second pass in the same slot
        returns ``{"skipped": true}`` and changes nothing (so the rollups never count a slot twice).
        """
        with self.lock:
            wall = time.time()
            slot = int(wall // interval * interval)
            if self.last_slot is not None and slot <= self.last_slot:
                return {"skipped": True, "ts": slot, "interval": interval}
            self.last_slot = slot
            return self._pass(engine, cgroup_path, slot, interval, subvolume_id, qgroups, ifname)

    def _pass(self, engine: Engine, cgroup_path: Callable[[str, str], Path | None], slot: int, interval: int,
              subvolume_id: Callable[[Path], int | None] | None, qgroups: Callable[[], Path | None] | None,
              ifname: Callable[[int], str] | None) -> dict[str, Any]:
        layout = engine.layout
        base = {c: cgroup_path(c, "") for c in ("cpuacct", "cpu", "memory", "pids")}
        v1 = base["cpuacct"] is not None
        cpu_base = base["cpuacct"] if v1 else base["cpu"]
        qdir = qgroups() if qgroups else None
        ves: dict[str, VESample] = {}
        seen = set()
        for ctid in engine.ctids():
            seen.add(ctid)
            rel = layout.cgroup_dir(ctid)
            now = time.monotonic()
            pids = _int(_read(f"{base['pids']}/{rel}/pids.current")) if base["pids"] is not None else None
            prev = self.prev.get(ctid)
            if not pids:
                self.prev[ctid] = Reading(now)  # not running: a later start is a new run
                continue
            r = Reading(now)
            cpu_dir = f"{cpu_base}/{rel}"
            with contextlib.suppress(OSError):
                r.cpu_run = os.stat(cpu_dir).st_ino
            if v1:
                r.cpu_ns = _int(_read(f"{cpu_dir}/cpuacct.usage"))
            else:
                usec = _keyed(_read(f"{cpu_dir}/cpu.stat"), "usage_usec")
                r.cpu_ns = usec * 1000 if usec is not None else None
            mem_file = "memory.usage_in_bytes" if v1 else "memory.current"
            mem = _int(_read(f"{base['memory']}/{rel}/{mem_file}")) if base["memory"] is not None else None
            if ifname is not None:
                self._read_net(r, ifname(ctid))
            self.prev[ctid] = r
            cpu = rate(now, prev, r.cpu_run, r.cpu_ns, prev.cpu_run if prev else None, prev.cpu_ns if prev else None)
            if cpu is None:
                continue  # first sight of this run: no rate yet
            assert prev is not None, "rate() gave a value, so there is a previous reading"
            net_in = rate(now, prev, r.net_run, r.net_in, prev.net_run, prev.net_in)
            net_out = rate(now, prev, r.net_run, r.net_out, prev.net_run, prev.net_out)
            ves[str(ctid)] = {
                "cpu": round(cpu / 1e6),  # milli-CPUs: 1000 = one CPU busy all the time
                "mem": mem,
                "disk": self._disk(ctid, layout, qdir, subvolume_id),
                "net_in": round(net_in or 0),
                "net_out": round(net_out or 0),
                "nproc": pids,
            }
        for gone in set(self.prev) - seen:
            del self.prev[gone]
            self.subvol.pop(gone, None)
        return {"ts": slot, "interval": interval, "ves": ves, "node": self._host(layout, ves)}

    @staticmethod
    def _read_net(r: Reading, name: str) -> None:
        base = f"/sys/class/net/{name}"
        r.net_run = _int(_read(f"{base}/ifindex"))
        if r.net_run is not None:
            r.net_in = _int(_read(f"{base}/statistics/tx_bytes"))  # what the host sends down the veth: VE's in
            r.net_out = _int(_read(f"{base}/statistics/rx_bytes"))

    def _disk(self, ctid: int, layout: Layout, qdir: Path | None,
              subvolume_id: Callable[[Path], int | None] | None) -> int | None:
        """Bytes the VE's subvolume references (btrfs qgroups), None where there is no quota accounting."""
        if qdir is None or subvolume_id is None:
            return None
        sid = self.subvol.get(ctid)
        if sid is not None:
            used = _int(_read(f"{qdir}/0_{sid}/referenced"))
            if used is not None:
                return used
        sid = subvolume_id(layout.private(ctid))  # first time, or the VE was made again under its id
        if sid is None:
            return None
        self.subvol[ctid] = sid
        return _int(_read(f"{qdir}/0_{sid}/referenced"))

    def _host(self, layout: Layout, ves: dict[str, VESample]) -> dict[str, int | None] | None:
        """The node itself: CPUs busy, memory in use, pool space used, its VEs' traffic, its processes."""
        now = time.monotonic()
        fields = (_read("/proc/stat") or "").split("\n", 1)[0].split()[1:]
        jiffies = [int(x) for x in fields if x.isdigit()]
        if len(jiffies) < 5:
            return None
        total, idle = sum(jiffies[:8]), jiffies[3] + jiffies[4]
        prev, self.host_prev = self.host_prev, (now, total - idle, total)
        if prev is None or total <= prev[2]:
            return None
        cpus = os.cpu_count() or 1
        busy = (total - idle - prev[1]) / (total - prev[2]) * cpus
        meminfo = {}
        for line in (_read("/proc/meminfo") or "").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                meminfo[key] = int(rest.split()[0]) * 1024
        disk = None
        with contextlib.suppress(OSError):
            st = os.statvfs(layout.pool)
            disk = (st.f_blocks - st.f_bfree) * st.f_frsize
        loadavg = (_read("/proc/loadavg") or "").split()
        nproc = _int(loadavg[3].split("/")[1]) if len(loadavg) > 3 and "/" in loadavg[3] else None
        return {
            "cpu": round(busy * 1000),
            "mem": meminfo.get("MemTotal", 0) - meminfo.get("MemAvailable", 0) if meminfo else None,
            "disk": disk,
            "net_in": sum(v["net_in"] for v in ves.values()),
            "net_out": sum(v["net_out"] for v in ves.values()),
            "nproc": nproc,
            "ves": len(ves),
        }


SAMPLERS: dict[str, Sampler] = {}  # one per engine root (tests run agents on private roots)
_samplers_lock = threading.Lock()


def sampler_for(root: Path | str) -> Sampler:
    with _samplers_lock:
        return SAMPLERS.setdefault(str(root), Sampler())
