"""Benchmark resource control: overhead inside a VE, neighbours under attack, cost of accounting.

    sudo .venv/bin/python bench/resources_bench.py [--runs 5] [--ves 100]

1. Overhead: CPU-bound work (an awk loop) and memory-bound work (dd from /dev/zero through a
   256 MB buffer) with the VE's own static busybox, inside a VE and on the host, interleaved in
   one run. Wall time and CPU time (wait4() on the host, the VE's cgroup inside) both; the
   fixed cost of getting there (lxc-attach vs a plain fork+exec, measured with ``busybox true``)
   is subtracted, so the ratio is the cost of running in the VE. On a busy machine the CPU
   time is the steadier of the two.
2. Neighbours: how fast VE B answers (``lxc-attach B -- true``) and does a small CPU job while
   VE A is idle, runs a CPU hog on every core, a fork bomb (kept going at its numproc limit) and
   a memory hog (killed by the OOM killer again and again at its RAM limit).
3. Accounting: reading the usage of ``--ves`` running VEs in one pass (what a panel polling
   every second does), against reading the same files naively and against ``lxc-info`` per VE.

Uses a private engine root that it removes at the end, with the lxcfs the engine supervises.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vzengine import Engine, cgroups
from vzengine.accounting import V1_FILES, V2_FILES
from vzengine.resources import ResourcesFeature


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ms(xs: list[float]) -> str:
    return f"{min(xs) * 1000:8.1f} {statistics.median(xs) * 1000:8.1f} {max(xs) * 1000:8.1f}"


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]


def attach(eng: Engine, ctid: int, argv: list[str]) -> list[str]:
    return ["lxc-attach", "-P", str(eng.layout.lxcpath), "-n", str(ctid), "--clear-env", "--", *argv]


def spawn(eng: Engine, ctid: int, script: str, name: str) -> None:
    eng.exec(ctid, f"cat > /root/{name}.sh", input=script)
    eng.exec(ctid, f"setsid sh /root/{name}.sh </dev/null >/dev/null 2>&1 &")


# --- 1. overhead ------------------------------------------------------------------------------

def calibrate(argv_for, target: float) -> int:
    n = 1
    while True:
        t = timed(argv_for(n))
        if t > target / 4:
            return max(1, int(n * target / t))
        n *= 4


def host_cpu(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a command run on the host."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, ru.ru_utime + ru.ru_stime


def ve_cpu(eng: Engine, ctid: int, argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds charged to the VE's cgroup) of a command run inside the VE."""
    feature = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    c0 = feature.usage(ctid)["cpu_seconds"]
    wall = timed(attach(eng, ctid, argv))
    return wall, feature.usage(ctid)["cpu_seconds"] - c0


def bench_overhead(eng: Engine, ctid: int, runs: int) -> list[str]:
    busybox = str(eng.layout.private(ctid) / "bin/busybox")  # the very binary the VE runs

    def awk(n):
        return ["awk", f"BEGIN{{s=0; for(i=0;i<{n};i++) s+=i; print s}}"]

    def dd(n):
        return ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", f"count={n}"]

    out = []
    for label, work in (("CPU-bound (awk loop)", awk), ("memory-bound (dd 256M)", dd)):
        n = calibrate(lambda k, w=work: [busybox, *w(k)], 2.0)
        host, ve, host0, ve0 = [], [], [], []
        for _ in range(runs):
            host0.append(host_cpu([busybox, "true"]))
            ve0.append(ve_cpu(eng, ctid, ["/bin/busybox", "true"]))
            host.append(host_cpu([busybox, *work(n)]))
            ve.append(ve_cpu(eng, ctid, ["/bin/busybox", *work(n)]))
        for i, what in ((0, "wall"), (1, "CPU")):
            h0 = statistics.median(x[i] for x in host0)
            v0 = statistics.median(x[i] for x in ve0)
            h = [x[i] - h0 for x in host]
            v = [x[i] - v0 for x in ve]
            ratio = statistics.median(v) / statistics.median(h)
            best = min(v) / min(h)  # the least disturbed run of each: less noise from neighbours
            out.append(f"  {label:<24} {what:<4} in VE {ms(v)}   on host {ms(h)}   "
                       f"ratio of medians {ratio:6.4f} ({(ratio - 1) * 100:+.2f}%), of minimums {best:6.4f} "
                       f"({(best - 1) * 100:+.2f}%)")
        fixed = (statistics.median(x[0] for x in ve0), statistics.median(x[0] for x in host0))
    out.append(f"  (fixed cost subtracted, wall: lxc-attach {fixed[0] * 1000:.1f} ms, fork+exec "
               f"{fixed[1] * 1000:.1f} ms; CPU time: the host's from wait4(), the VE's from its cgroup)")
    return out


# --- 2. neighbours ----------------------------------------------------------------------------

class Respawner(threading.Thread):
    """Keep an attack going in VE A: start ``argv`` again whenever A has room for it."""

    def __init__(self, eng: Engine, ctid: int, argv: list[str], below: int):
        super().__init__(daemon=True)
        self.eng, self.ctid, self.argv, self.below = eng, ctid, argv, below
        self.stop = threading.Event()
        self.count = 0

    def run(self) -> None:
        rel = self.eng.layout.cgroup_dir(self.ctid)
        while not self.stop.is_set():
            n = int(cgroups.read("pids", rel, "pids.current") or 0)
            if n < self.below:
                subprocess.run(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                self.count += 1
            self.stop.wait(0.05)


BUSY = "while [ ! -e /tmp/stop-hog ]; do :; done\n"
BOMB = "b() { while [ ! -e /tmp/stop-hog ]; do b & done; }\nb\n"


def probe(eng: Engine, victim: int, n_attach: int = 30, n_work: int = 10) -> tuple[list[float], list[float]]:
    lat = [timed(attach(eng, victim, ["/bin/true"])) for _ in range(n_attach)]
    work = [timed(attach(eng, victim, ["/bin/busybox", "awk", "BEGIN{for(i=0;i<300000;i++)s+=i}"]))
            for _ in range(n_work)]
    return lat, work


def quiesce(eng: Engine, ctid: int) -> None:
    (eng.layout.private(ctid) / "tmp/stop-hog").touch()
    rel = eng.layout.cgroup_dir(ctid)
    deadline = time.monotonic() + 30
    while int(cgroups.read("pids", rel, "pids.current") or 0) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    (eng.layout.private(ctid) / "tmp/stop-hog").unlink(missing_ok=True)


def bench_neighbours(eng: Engine, attacker: int, victim: int) -> list[str]:
    feature = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    eng.set(attacker, ram="128M", swap="0", numproc="64")
    rows: dict[str, tuple[list[float], list[float], str]] = {}
    rows["alone"] = (*probe(eng, victim), "")

    ncpu = len(cgroups.online_cpus())
    for i in range(ncpu):
        spawn(eng, attacker, BUSY, f"busy{i}")
    time.sleep(1)
    c0 = feature.usage(attacker)["cpu_seconds"]
    t0 = time.monotonic()
    lat, work = probe(eng, victim)
    share = (feature.usage(attacker)["cpu_seconds"] - c0) / (time.monotonic() - t0)
    rows[f"CPU hog ({ncpu} loops)"] = (lat, work, f"A used {share:.2f} CPUs meanwhile")
    quiesce(eng, attacker)

    eng.exec(attacker, "cat > /root/bomb.sh", input=BOMB)
    bomb = Respawner(eng, attacker, attach(eng, attacker, ["/bin/sh", "-c", "setsid sh /root/bomb.sh "
                                                           "</dev/null >/dev/null 2>&1 &"]), 32)
    before = feature.usage(attacker)["nproc_failcnt"] or 0
    bomb.start()
    time.sleep(1)
    lat, work = probe(eng, victim)
    bomb.stop.set()
    bomb.join()
    fails = (feature.usage(attacker)["nproc_failcnt"] or 0) - before
    rows["fork bomb (numproc 64)"] = (lat, work, f"{fails} forks refused in A")
    quiesce(eng, attacker)

    hog = Respawner(eng, attacker, attach(eng, attacker, ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null",
                                                          "bs=300M", "count=1"]), 99)
    before = feature.usage(attacker)["oom_kills"] or 0
    hog.start()
    time.sleep(1)
    lat, work = probe(eng, victim)
    hog.stop.set()
    hog.join()
    kills = (feature.usage(attacker)["oom_kills"] or 0) - before
    rows["memory hog (ram 128M)"] = (lat, work, f"{kills} OOM kills in A")
    quiesce(eng, attacker)

    base_lat, base_work = statistics.median(rows["alone"][0]), statistics.median(rows["alone"][1])
    out = [f"  {'while VE A runs':<24} {'attach+true: median    p95     max':>36}  ratio "
           f"{'small CPU job: median    p95':>32}  ratio"]
    for name, (lat, work, note) in rows.items():
        out.append(f"  {name:<24} {statistics.median(lat) * 1000:20.1f} {p95(lat) * 1000:7.1f} "
                   f"{max(lat) * 1000:7.1f}  {statistics.median(lat) / base_lat:5.2f} "
                   f"{statistics.median(work) * 1000:23.1f} {p95(work) * 1000:7.1f}  "
                   f"{statistics.median(work) / base_work:5.2f}  {note}")
    return out


# --- 3. accounting ----------------------------------------------------------------------------

def naive_read(eng: Engine, ctids: list[int]) -> None:
    files = V1_FILES if (cgroups.version("memory") or 1) == 1 else V2_FILES
    for ctid in ctids:
        rel = eng.layout.cgroup_dir(ctid)
        for ctrl, name, _ in files:
            p = cgroups.path(ctrl, rel)
            if p is not None:
                with contextlib.suppress(OSError):
                    (p / name).read_text()


def bench_accounting(eng: Engine, n: int, base: int, runs: int) -> list[str]:
    feature = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    ctids = list(range(base, base + n))
    t0 = time.perf_counter()
    for c in ctids:
        eng.create(c, "tiny")
    t_create = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in ctids:
        eng.start(c)
    t_start = time.perf_counter() - t0
    time.sleep(1)
    ours, naive, listing = [], [], []
    for _ in range(max(runs, 10)):
        t0 = time.perf_counter()
        usage = feature.usage_all()
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive_read(eng, ctids)
        naive.append(time.perf_counter() - t0)
    assert sum(1 for c in ctids if usage[c]["running"]) == n
    for _ in range(3):
        t0 = time.perf_counter()
        eng.list()
        listing.append(time.perf_counter() - t0)
    lxc_info = []
    for _ in range(2):
        t0 = time.perf_counter()
        for c in ctids:
            subprocess.run(["lxc-info", "-P", str(eng.layout.lxcpath), "-n", str(c), "-S", "-H"],
                           stdout=subprocess.DEVNULL, check=False)
        lxc_info.append(time.perf_counter() - t0)
    qgroup = [timed(["btrfs", "qgroup", "show", "--raw", str(eng.layout.pool)]) for _ in range(runs)]
    med = statistics.median(ours)
    return [
        f"  created {n} tiny VEs in {t_create:.2f} s, started them in {t_start:.2f} s",
        f"  usage_all() of {n} running VEs        {ms(ours)}   = {med / n * 1e6:.0f} us per VE, "
        f"{med * 100:.2f}% of one CPU when polled every second",
        f"  same cgroup files, naive read_text()  {ms(naive)}   ratio {med / statistics.median(naive):.2f}"
        " (ours also reads disk usage)",
        f"  lxc-info -S per VE (a tool per VE)    {ms(lxc_info)}   ratio {med / statistics.median(lxc_info):.4f}",
        f"  btrfs qgroup show (disk, one call)    {ms(qgroup)}",
        f"  Engine.list() (vzlist -a, all feats)  {ms(listing)}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ves", type=int, default=100)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vzbench-res-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text('POOL_SIZE="8G"\n')
    eng = Engine(root)
    lines: list[str] = []
    try:
        eng.ensure_ready()
        a, b = 7001, 7002
        for c in (a, b):
            eng.create(c, "tiny")
            eng.start(c, wait_boot=True)
        print("1/3 overhead ...", file=sys.stderr, flush=True)
        lines.append(f"1. overhead, {args.runs} interleaved runs, ms net of the fixed cost (min / median / max)")
        lines += bench_overhead(eng, a, args.runs)
        print("2/3 neighbours ...", file=sys.stderr, flush=True)
        lines.append("2. neighbour VE B while VE A is attacked, ms")
        lines += bench_neighbours(eng, a, b)
        for c in (a, b):
            eng.stop(c, fast=True)
        print(f"3/3 accounting of {args.ves} VEs ...", file=sys.stderr, flush=True)
        lines.append(f"3. accounting, ms (min / median / max over {max(args.runs, 10)} passes)")
        lines += bench_accounting(eng, args.ves, 7100, args.runs)
    finally:
        for c in eng.ctids():
            if eng.is_running(c):
                subprocess.run(["lxc-stop", "-P", str(eng.layout.lxcpath), "-n", str(c), "-k"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    print(f"vzengine resources benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"kernel {os.uname().release}, cgroup v{cgroups.version('memory')}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
