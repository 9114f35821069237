"""Benchmark the VE engine against the raw tools underneath, in one run, on this machine.

    sudo .venv/bin/python bench/engine_bench.py [--runs 5] [--templates tiny,debian-12-sysv,debian-12]

For each template: create (vs `btrfs subvolume snapshot` of the same template), start until
init runs (vs bare `lxc-start` of a twin VE: same template, same kind of LXC config), start
until the system reports it has booted (vs bare `lxc-start` plus the same boot check), stop
(vs `lxc-stop`), destroy (vs `btrfs subvolume delete` of the twin, which has booted too), and
the memory of an idle VE. Uses a private engine root that it removes at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vzengine import (
    Engine,
    cgroups,
)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_boot_raw(eng: Engine, ctid: int, check: str) -> None:
    while subprocess.run(eng.lxc.attach_argv(ctid, ["/bin/sh", "-c", check]), capture_output=True).returncode:
        time.sleep(0.05)


def idle_memory(eng: Engine, ctid: int) -> tuple[int, int]:
    """(anonymous + kernel memory charged to the VE, total including page cache), bytes."""
    rel = eng.layout.cgroup_dir(ctid)
    stat = cgroups.read("memory", rel, "memory.stat") or ""
    fields = dict(line.split() for line in stat.splitlines())
    if "total_rss" in fields:  # cgroup v1
        usage = int(cgroups.read("memory", rel, "memory.usage_in_bytes"))
        anon = int(fields["total_rss"]) + int(fields.get("total_shmem", 0))
        kmem = int(cgroups.read("memory", rel, "memory.kmem.usage_in_bytes") or 0)
        return anon + kmem, usage
    usage = int(cgroups.read("memory", rel, "memory.current"))
    return int(fields.get("anon", 0)) + int(fields.get("shmem", 0)) + int(fields.get("kernel", 0)), usage


def bench_template(eng: Engine, template: str, runs: int, base_id: int) -> list[tuple]:
    rows = []
    spec = eng.templates.spec(template)
    tpl_root = eng.templates.ensure(template)
    ours: dict[str, list[float]] = {k: [] for k in ("create", "start", "boot", "stop", "destroy")}
    raw: dict[str, list[float]] = {k: [] for k in ours}
    mem: list[tuple[int, int]] = []
    idmount: list[float] = []  # mounting the VE's root id-mapped to its own range (part of every start)
    for i in range(runs):
        ctid, twin = base_id + 2 * i, base_id + 2 * i + 1  # ours, and a twin driven by the raw tools
        snap = eng.layout.private(ctid)
        raw["create"].append(timed(lambda s=snap: sh("btrfs", "-q", "subvolume", "snapshot", str(tpl_root), str(s))))
        sh("btrfs", "-q", "subvolume", "delete", str(snap))
        ours["create"].append(timed(lambda c=ctid: eng.create(c, template)))
        eng.create(twin, template)
        # the twin's LXC config names its id-mapped root, as ours does: mount it (what start does first)
        idmount.append(timed(lambda c=twin: eng.prepare_root(eng.config(c))))
        # raw: lxc-start / lxc-stop of the twin, same rootfs kind and same LXC config
        raw["start"].append(timed(lambda c=twin: sh("lxc-start", "-P", str(eng.layout.lxcpath), "-n", str(c))))
        raw["boot"].append(raw["start"][-1] + timed(lambda c=twin: wait_boot_raw(eng, c, spec.boot_check)))
        time.sleep(0.5)
        raw["stop"].append(timed(lambda c=twin: sh("lxc-stop", "-P", str(eng.layout.lxcpath), "-n", str(c), "-t", "60")))
        # ours
        ours["start"].append(timed(lambda c=ctid: eng.start(c)))
        ours["boot"].append(ours["start"][-1] + timed(lambda c=ctid: eng.wait_booted(c)))
        time.sleep(3 if i == 0 else 0.5)
        if i == 0:
            mem.append(idle_memory(eng, ctid))
        ours["stop"].append(timed(lambda c=ctid: eng.stop(c)))
        ours["destroy"].append(timed(lambda c=ctid: eng.destroy(c)))
        raw["destroy"].append(timed(lambda c=twin: sh("btrfs", "-q", "subvolume", "delete", str(eng.layout.private(c)))))
        eng.templates.storage.create(eng.layout.private(twin))  # an empty root, so destroy can finish
        eng.destroy(twin)
    labels = {
        "create": "btrfs subvolume snapshot",
        "start": "lxc-start (init runs)",
        "boot": "lxc-start + boot check",
        "stop": "lxc-stop -t 60",
        "destroy": "btrfs subvolume delete",
    }
    for key in ours:
        rows.append((template, key, ours[key], labels[key], raw[key]))
    anon, total = mem[0]
    rows.append((template, "idle memory", anon, total))
    rows.append((template, "id-mapped mount", idmount))
    return rows


def fmt(xs: list[float]) -> str:
    return f"{min(xs) * 1000:7.1f} {statistics.median(xs) * 1000:7.1f} {max(xs) * 1000:7.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--templates", default="tiny,debian-12-sysv,debian-12")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vzbench-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text('POOL_SIZE="8G"\n')
    eng = Engine(root)
    rows = []
    try:
        eng.ensure_ready()
        for n, template in enumerate(args.templates.split(",")):
            print(f"benchmarking {template} ({args.runs} runs) ...", file=sys.stderr, flush=True)
            rows += bench_template(eng, template, args.runs, 9000 + n * 100)
    finally:
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    print(f"vzengine benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"{args.runs} runs; times in ms (min / median / max)")
    print(f"{'template':<15} {'operation':<12} {'vzengine':>23}   {'raw tool':<26} {'raw':>23}  ratio")
    for row in rows:
        if row[1] == "idle memory":
            print(f"{row[0]:<15} {'idle memory':<12} {row[2] / 2**20:8.1f} MB anon+kernel, "
                  f"{row[3] / 2**20:.1f} MB with page cache")
            continue
        if row[1] == "id-mapped mount":
            print(f"{row[0]:<15} {'idmap mount':<12} {fmt(row[2])}   (own id range + id-mapped root, in start)")
            continue
        template, key, ours, label, raw = row
        ratio = statistics.median(ours) / statistics.median(raw)
        print(f"{template:<15} {key:<12} {fmt(ours)}   {label:<26} {fmt(raw)}  {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
