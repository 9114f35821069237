"""Benchmark the usage history: one sampling pass in the node agent, and storing it in the panel's database.

    sudo .venv/bin/python bench/metrics_bench.py [--ves 10,50,100,200] [--passes 10] [--store-ves 1000]

1. Agent side, at N running tiny VEs (each with an address, so a veth to count): CPU ms of one pass of the
   `metrics_sample` operation as the agent runs it (vzpanel/agent/ops.py -> vzengine/sampling.py),
   against reading the same kernel files raw (open + read + close each, no parsing: the `cat` floor), and
   against the `list` operation with usage=True (Engine.list + Engine.usage per VE, what reconcile asks for).
   Per-VE slope from the smallest to the largest N, extrapolated to 1,000 VEs, in % of one core at a 10 s
   interval.
2. Panel side, SQLite (the default database), --store-ves VEs: CPU ms to store one pass (raw tier + the two
   rollup upserts), bytes per stored point after an hour of passes, a graph read, the hourly prune; and the
   alternative considered, a round-robin file per VE (whisper/RRD-like, fixed slots, 3 archives), writing the
   same pass.

Uses a private engine root (its own pool and IP pool) and a private SQLite file under /var/tmp, removed at
the end even when a step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vzengine import Engine, accounting, cgroups  # noqa: E402
from vzengine.network import ifname  # noqa: E402


def cpu_ms(fn, passes: int) -> tuple[float, float, float]:
    """(min, median, max) CPU ms of fn() over passes calls (process CPU time: the machine is shared)."""
    out = []
    for _ in range(passes):
        t0 = time.process_time()
        fn()
        out.append((time.process_time() - t0) * 1000)
    return min(out), statistics.median(out), max(out)


def fmt(t) -> str:
    return f"{t[0]:7.2f} {t[1]:7.2f} {t[2]:7.2f}"


# --- 1. the agent's pass ---------------------------------------------------------------------------------

def agent_pass(eng: Engine):
    """The `metrics_sample` operation exactly as the agent runs it, its same-slot guard reset each time."""
    from vzengine.sampling import sampler_for
    from vzpanel.agent.ops import OPS, Context

    op = OPS["metrics_sample"]
    ctx = Context(eng, eng.layout.root / "backups", lambda *_: None)
    sampler = sampler_for(eng.layout.root)

    def run():
        sampler.last_slot = None
        return op.run(ctx, interval=10)

    return run


def raw_pass(eng: Engine):
    """Read the same files with no parsing, no rates: one open/read/close each (the floor)."""
    rel = eng.layout.cgroup_dir
    v1 = cgroups.version("cpuacct") == 1
    cpu = cgroups.path("cpuacct" if v1 else "cpu", "")
    mem, pids = cgroups.path("memory", ""), cgroups.path("pids", "")
    qdir = accounting.UsageReader(eng.layout).qgroups()
    subvols = {c: accounting.subvolume_id(eng.layout.private(c)) for c in eng.ctids()}
    files = []
    for c in eng.ctids():
        net = f"/sys/class/net/{ifname(eng.layout.tag, c)}"
        files += [f"{pids}/{rel(c)}/pids.current", f"{cpu}/{rel(c)}/{'cpuacct.usage' if v1 else 'cpu.stat'}",
                  f"{mem}/{rel(c)}/{'memory.usage_in_bytes' if v1 else 'memory.current'}",
                  f"{net}/ifindex", f"{net}/statistics/tx_bytes", f"{net}/statistics/rx_bytes"]
        if qdir is not None and subvols[c] is not None:
            files.append(f"{qdir}/0_{subvols[c]}/referenced")
    files += ["/proc/stat", "/proc/meminfo", "/proc/loadavg"]

    def run():
        for f in files:
            with contextlib.suppress(OSError), open(f, "rb") as fh:
                fh.read()
    return run, len(files)


def list_usage_pass(eng: Engine):
    from vzpanel.agent.ops import OPS, Context

    op = OPS["list"]
    ctx = Context(eng, eng.layout.root / "backups", lambda *_: None)
    return lambda: op.run(ctx, usage=True)


def bench_agent(eng: Engine, net, sizes: list[int], passes: int) -> tuple[list[str], dict]:
    lines = [f"{'VEs':>5}  {'metrics_sample (ms CPU)':>25}  {'raw reads (ms CPU)':>25}  files  ratio  "
             f"{'list usage=True':>25}",
             f"{'':>5}  {'min  median     max':>25}  {'min  median     max':>25}"]
    made, batch, per_n = [], None, {}
    for n in sizes:
        while len(made) < n:
            ctid = 8000 + len(made)
            eng.create(ctid, "tiny", ipadd=[net.ip(10 + len(made))])
            eng.start(ctid)
            made.append(ctid)
        time.sleep(1)
        sample = agent_pass(eng)
        sample()  # the first pass of each VE has no rate yet, and looks up the subvolume ids
        ours = cpu_ms(sample, passes)
        batch = sample()
        raw_run, nfiles = raw_pass(eng)
        raw = cpu_ms(raw_run, passes)
        listing = cpu_ms(list_usage_pass(eng), max(3, passes // 3))
        assert len(batch["ves"]) == n, f"{len(batch['ves'])} of {n} VEs sampled"
        per_n[n] = ours[1]
        lines.append(f"{n:>5}  {fmt(ours):>25}  {fmt(raw):>25}  {nfiles:5d}  {ours[1] / raw[1]:5.2f}  "
                     f"{fmt(listing):>25}")
    lo, hi = min(per_n), max(per_n)
    slope = (per_n[hi] - per_n[lo]) / (hi - lo) if hi > lo else per_n[hi] / hi
    at_1000 = per_n[hi] + slope * (1000 - hi)
    lines.append(f"per-VE slope {slope * 1000:.0f} us CPU; at 1,000 VEs ~{at_1000:.0f} ms CPU per pass = "
                 f"{at_1000 / 10000 * 100:.2f}% of one core at a 10 s interval")
    return lines, batch


# --- 2. the panel's storage ---------------------------------------------------------------------------------

def django_setup(tmp: Path) -> None:
    os.environ.update(DJANGO_SETTINGS_MODULE="vzpanel.settings", VZPANEL_STATE=str(tmp),
                      DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}", VZPANEL_SECRET_KEY="bench-only")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def synthetic_batch(template: dict | None, n: int, ts: int) -> dict:
    one = next(iter(template["ves"].values())) if template and template["ves"] else {
        "cpu": 12, "mem": 2_500_000, "disk": 1_200_000, "net_in": 40, "net_out": 12, "nproc": 3}
    ves = {str(9000 + i): {k: (v + i % 7 if isinstance(v, int) else v) for k, v in one.items()} for i in range(n)}
    node = {"cpu": 700, "mem": 3 << 30, "disk": 5 << 30, "net_in": 100, "net_out": 50, "nproc": 400, "ves": n}
    return {"ts": ts, "interval": 10, "ves": ves, "node": node}


class RoundRobinFiles:
    """The alternative: one fixed-size file per VE, three archives of slots (whisper/RRD-like). A slot holds
    the sums and count (9 int64), so a rollup slot is read, added to and written back."""

    LAYOUT = ((10, 8640), (60, 10080), (600, 52560))
    SLOT = struct.Struct("<q9q")  # slot's ts, n, 6 sums, 2 maxima

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        self.offsets, off = [], 0
        for _, slots in self.LAYOUT:
            self.offsets.append(off)
            off += slots * self.SLOT.size
        self.size = off

    def write(self, ctid: str, ts: int, s: dict) -> None:
        fd = os.open(self.path / ctid, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size == 0:
                os.ftruncate(fd, self.size)  # sparse until written
            vals = [s["cpu"], s["mem"], s["disk"], s["net_in"], s["net_out"], s["nproc"], s["cpu"], s["mem"]]
            for (width, slots), base in zip(self.LAYOUT, self.offsets, strict=True):
                bucket = ts - ts % width
                off = base + (bucket // width % slots) * self.SLOT.size
                old = self.SLOT.unpack(os.pread(fd, self.SLOT.size, off))
                if old[0] == bucket and width > 10:
                    n = old[1] + 1
                    new = [a + b for a, b in zip(old[2:8], vals[:6], strict=True)] + [
                        max(a, b) for a, b in zip(old[8:], vals[6:], strict=True)]
                else:
                    n, new = 1, vals
                os.pwrite(fd, self.SLOT.pack(bucket, n, *new), off)
        finally:
            os.close(fd)


def bench_store(tmp: Path, template: dict | None, n: int, passes: int) -> list[str]:
    from django.db import connection

    from vzpanel.metrics import store
    from vzpanel.metrics.models import RawPoint, Series
    from vzpanel.nodes.models import Node
    from vzpanel.ves.models import VE

    node = Node.objects.create(name="bench")
    VE.objects.bulk_create([VE(ctid=9000 + i, node=node, hostname=f"b{i}", status="running") for i in range(n)])
    db = tmp / "bench.sqlite3"
    t0 = int(time.time()) // 3600 * 3600 - 7200
    ts = [t0]

    def one_pass():
        ts[0] += 10
        store.ingest(node, synthetic_batch(template, n, ts[0]))

    one_pass()  # makes the series
    costs = cpu_ms(one_pass, passes)
    hour = 360 - passes - 1
    wall = time.perf_counter()
    for _ in range(hour):
        one_pass()
    wall = time.perf_counter() - wall
    with connection.cursor() as cur:
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = RawPoint.objects.count()
    size = db.stat().st_size
    raw_bytes = table_bytes("metrics_raw")
    per_point = raw_bytes / rows if raw_bytes else size / rows
    sid = Series.objects.filter(ve__ctid=9000).values_list("pk", flat=True).first()
    class_ids = list(Series.objects.filter(ve__ctid__lt=9030).values_list("pk", flat=True))
    read_hour = cpu_ms(lambda: store.read([sid], "hour", now=ts[0]), 10)
    read_day = cpu_ms(lambda: store.read([sid], "day", now=ts[0]), 10)
    read_class = cpu_ms(lambda: store.read(class_ids, "hour", now=ts[0]), 5)
    prune = cpu_ms(lambda: store.prune(node, now=ts[0]), 3)

    rr = RoundRobinFiles(tmp / "rrd")
    batch = synthetic_batch(template, n, ts[0])
    rts = [ts[0]]

    def rr_pass():
        rts[0] += 10
        for ctid, s in batch["ves"].items():
            rr.write(ctid, rts[0], s)

    rr_pass()
    rr_costs = cpu_ms(rr_pass, passes)
    day_rows = n * 8640 + n * 1440 * 7 + n * 144 * 365
    return [
        f"SQLite, {n} VEs: store one pass (raw + 1 min + 10 min upserts)  {fmt(costs)} ms CPU "
        f"(min/median/max) = {costs[1] / 10000 * 100:.2f}% of one core at 10 s",
        f"  an hour of passes ({hour + passes + 1}) in {wall:.1f} s wall; {rows:,} raw points, "
        f"{per_point:.0f} bytes per raw point (table and key, WITHOUT ROWID)",
        f"  full retention at {n} VEs: {day_rows / 1e6:.1f} M points (a day raw, a week of minutes, a year of "
        f"10 min) ~ {day_rows * per_point / 1e9:.1f} GB",
        f"  read a graph: hour of one VE {read_hour[1]:.2f} ms, day {read_day[1]:.2f} ms, "
        f"hour of a class of {len(class_ids)} {read_class[1]:.2f} ms; hourly prune {prune[1]:.1f} ms",
        f"round-robin file per VE, {n} VEs: write one pass  {fmt(rr_costs)} ms CPU; fixed "
        f"{rr.size / 1e6:.1f} MB per VE = {rr.size * 1000 / 1e9:.1f} GB at 1,000 VEs (sparse until filled)",
    ]


def table_bytes(name: str) -> int | None:
    """Bytes of a table's pages (SQLite's dbstat), None where SQLite was built without it."""
    from django.db import connection

    try:
        with connection.cursor() as cur:
            cur.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = %s", [name])
            return cur.fetchone()[0]
    except Exception:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ves", default="10,50,100,200")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--store-ves", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: it starts VEs", file=sys.stderr)
        return 1
    from tests.conftest import free_test_net

    sizes = sorted(int(x) for x in args.ves.split(","))
    net = free_test_net()
    root = Path(tempfile.mkdtemp(prefix="vzbench-metrics-", dir="/var/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="vzbench-metrics-db-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'POOL_SIZE="8G"\nIP_POOL="{net.pool}"\nIP6_POOL="{net.pool6}"\n')
    eng = Engine(root)
    lines: list[str] = []
    batch = None
    try:
        eng.ensure_ready()
        print(f"1/2 agent passes at {sizes} VEs ...", file=sys.stderr, flush=True)
        agent_lines, batch = bench_agent(eng, net, sizes, args.passes)
        lines += ["1. agent: one sampling pass, ms of CPU", *agent_lines]
    finally:
        for c in eng.ctids():
            with contextlib.suppress(Exception):
                eng.stop(c, fast=True)
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    try:
        print(f"2/2 storage of {args.store_ves} VEs ...", file=sys.stderr, flush=True)
        django_setup(tmp)
        lines += ["2. panel: storing a pass", *bench_store(tmp, batch, args.store_ves, args.passes)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"vzpanel metrics benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"kernel {os.uname().release}, cgroup v{cgroups.version('memory')}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
