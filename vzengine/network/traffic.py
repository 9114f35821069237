"""Traffic totals of a VE: every run of its network added up, and the watcher of deleted veths.

A VE's host-side veth counts what it sends (the VE's "in") and receives ("out"), from zero with
every veth (each start, a reboot inside the VE, a resume). Each veth a VE had is one "run" of
its network, named <boot id>-<ifindex> (an interface index is not given twice in one boot).
<root>/traffic/<ctid>/<run> holds the last counts of a run that ended; the stop hook (hooks.py)
writes it when the VE stops or reboots (LXC runs it while it still holds the VE's network
namespace, so the veth is still there), the engine before it deletes a veth itself (--ipdel
all; a suspend, via checkpoint.py), and the node agent when a veth is deleted under the engine
(``veth_deleted``). Writing a run again only raises it, so nothing counts twice. "total" holds
the sum of older runs, folded in under the network lock, and on its second line the runs it took
in (a fold cut short leaves their files, which are then skipped and removed).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .hostcheck import read_sysctl
from .naming import ctid_of_ifname

if TYPE_CHECKING:
    from ..engine import Engine
    from ..layout import Layout
    from ..veconf import VEConfig

COUNTERS = ("traffic_in_bytes", "traffic_in_packets", "traffic_out_bytes", "traffic_out_packets")
TOTALS = ("net_in_bytes", "net_in_packets", "net_out_bytes", "net_out_packets")  # Engine.usage keys
# A VE's host-side veth sends what the VE receives: (in bytes, in packets, out bytes, out packets).
VETH_STATS = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")
Counts = tuple[int, int, int, int]

_boot: list[str] = []


def _counts(values: Iterable[int]) -> Counts:
    """Four counters as Counts: the callers hold exactly four (one per VETH_STATS name)."""
    a, b, c, d = values
    return a, b, c, d


def boot_id() -> str:
    if not _boot:
        _boot.append(read_sysctl("/proc/sys/kernel/random/boot_id"))
    return _boot[0]


def read_counts(path: Path) -> Counts | None:
    try:
        values = tuple(int(x) for x in path.read_text().split()[:4])
    except (OSError, ValueError):
        return None
    return values if len(values) == 4 else None


def read_total(path: Path) -> tuple[Counts, set[str]]:
    """(counts, names of the runs folded in) of a VE's "total" file."""
    try:
        lines = path.read_text().splitlines()
        counts = tuple(int(x) for x in lines[0].split()[:4])
    except (OSError, ValueError, IndexError):
        return (0, 0, 0, 0), set()
    if len(counts) != 4:
        return (0, 0, 0, 0), set()
    return counts, set(lines[1].split()) if len(lines) > 1 else set()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class TrafficMixin:
    """NetworkFeature's traffic accounting (it provides ``ifname``, ``traffic_dir``, ``layout``, ``engine``)."""

    if TYPE_CHECKING:  # what NetworkFeature provides
        engine: Engine

        @property
        def layout(self) -> Layout: ...
        @property
        def traffic_dir(self) -> Path: ...
        def ifname(self, ctid: int) -> str: ...

    def counters(self, ctid: int) -> Counts | None:
        """(bytes in, packets in, bytes out, packets out) of a VE since its network came up.

        Read from its host-side veth: what the host sends into it is the VE's "in". None when
        the VE has no veth. The counters start at zero at every start or reboot of the VE;
        ``totals`` adds up every run since the VE was created.
        """
        run = self._veth_run(ctid)
        return None if run is None else run[1]

    def usage(self, conf: VEConfig) -> dict:
        """Traffic since the VE was created: Engine.usage's net_in_bytes ... net_out_packets."""
        return dict(zip(TOTALS, self.totals(conf.ctid), strict=True))

    def totals(self, ctid: int) -> Counts:
        """(bytes in, packets in, bytes out, packets out) of every run of the VE's network."""
        current = self._veth_run(ctid)
        out = list(current[1]) if current else [0, 0, 0, 0]
        d = self.traffic_dir / str(ctid)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return _counts(out)
        base, folded = read_total(d / "total")
        for i, n in enumerate(base):
            out[i] += n
        for name in names:
            if name == "total" or name.startswith(".") or name in folded or (current and name == current[0]):
                continue
            for i, n in enumerate(read_counts(d / name) or ()):
                out[i] += n
        return _counts(out)

    def _veth_run(self, ctid: int) -> tuple[str, Counts] | None:
        """(run name, counters) of the VE's host-side veth now; None when it has none."""
        base = f"/sys/class/net/{self.ifname(ctid)}"
        try:
            with open(f"{base}/ifindex") as f:
                index = f.read().strip()
            counts = []
            for name in VETH_STATS:
                with open(f"{base}/statistics/{name}") as f:
                    counts.append(int(f.read()))
        except (OSError, ValueError):
            return None
        return f"{boot_id()}-{index}", _counts(counts)

    def save_traffic(self, ctid: int) -> None:
        """Keep the counts of the VE's veth before the engine deletes it (checkpoint.py too)."""
        run = self._veth_run(ctid)
        if run is not None:
            self._save_run(ctid, run[0], run[1])

    def _save_run(self, ctid: int, name: str, counts: Counts) -> None:
        d = self.traffic_dir / str(ctid)
        d.mkdir(parents=True, exist_ok=True)
        path = d / name
        old = read_counts(path) or (0, 0, 0, 0)
        write_atomic(path, " ".join(str(max(a, b)) for a, b in zip(old, counts, strict=True)) + "\n")

    def veth_deleted(self, name: str, index: int, stats: dict[str, int]) -> int | None:
        """Keep the last counts of a VE's host-side veth that was deleted under us; return its VE, or None.

        A VE's root can delete its own eth0, which deletes the whole pair: the host's end, where its traffic
        is counted, with the counts since the last reading. The node agent watches deletions (the kernel's
        message carries the final counters) and calls this. Writing a run only raises it, so a veth the stop
        hook or the engine already saved counts once.
        """
        ctid = ctid_of_ifname(self.layout.tag, name)
        if ctid is None or not self.engine.exists(ctid):
            return None
        d = self.traffic_dir / str(ctid)
        run = f"{boot_id()}-{index}"
        if run in read_total(d / "total")[1]:
            return ctid  # folded into the total already
        self._save_run(ctid, run, _counts(int(stats.get(k, 0)) for k in VETH_STATS))
        return ctid

    def _fold_runs(self, ctid: int) -> None:
        """Add the runs that ended into "total" (the network lock is held)."""
        d = self.traffic_dir / str(ctid)
        try:
            names = [n for n in os.listdir(d) if n != "total" and not n.startswith(".")]
        except FileNotFoundError:
            return
        if not names:
            return
        current = self._veth_run(ctid)
        base, folded = read_total(d / "total")
        total, taken = list(base), []
        for name in names:
            if name in folded:
                (d / name).unlink(missing_ok=True)  # folded before, but not removed then
            elif not (current and name == current[0]):
                for i, n in enumerate(read_counts(d / name) or ()):
                    total[i] += n
                taken.append(name)
        if taken:
            write_atomic(d / "total", " ".join(map(str, total)) + "\n" + " ".join(taken) + "\n")
            for name in taken:
                (d / name).unlink(missing_ok=True)
