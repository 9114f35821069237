"""Benchmark snapshots, clones, backups, restores and suspend/resume against the raw tools, in one run.

    sudo .venv/bin/python bench/snapshot_bench.py [--runs 5] [--template debian-12-sysv] [--data-mb 0]

On one VE's tree (the template's files, plus --data-mb of mixed data if asked), each engine
operation is timed next to the raw tool underneath on the same tree:

    snapshot       vzctl snapshot                vs  btrfs subvolume snapshot -r
    linked clone   vzctl clone --linked          vs  btrfs subvolume snapshot
    full clone     vzctl clone                   vs  cp -a --reflink=never (and btrfs send | receive)
    backup         vzctl backup (running VE)     vs  tar -c | zstd -T0 -3 of a read-only snapshot
    restore        vzctl restore                 vs  zstd -dc | tar -x into a new subvolume

and MB/s is the tree's size over the median time. Then suspend and resume of an idle VE and
of one holding 256 MB of touched memory, next to bare lxc-checkpoint on the same VE. Uses a
private engine root that it removes at the end.
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

from vzengine import Engine, checkpoint, criu


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(cmd: str) -> None:
    subprocess.run(["/bin/sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tree_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", "--apparent-size", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def btrfs_delete(path: Path) -> None:
    sh(f"btrfs property set -ts '{path}' ro false 2>/dev/null; btrfs -q subvolume delete '{path}'")


def add_data(eng: Engine, ctid: int, mb: int) -> None:
    """Mixed data: half random (incompressible), half text-like, in 8 MB files."""
    d = eng.layout.private(ctid) / "srv/bench"
    d.mkdir(parents=True)
    base = eng.layout.idmap[0]
    for i in range(mb // 8):
        p = d / f"data{i}"
        if i % 2:
            p.write_bytes(os.urandom(8 << 20))
        else:
            p.write_bytes((b"".join(b"line %08d of some log text with words\n" % j for j in range(200_000)))[: 8 << 20])
        os.chown(p, base, base)
    os.chown(d, base, base)


def fmt(xs: list[float]) -> str:
    return f"{min(xs) * 1000:8.1f} {statistics.median(xs) * 1000:8.1f} {max(xs) * 1000:8.1f}"


def bench_storage(eng: Engine, template: str, runs: int, data_mb: int, work: Path) -> tuple[list, int]:
    src = 7000
    eng.create(src, template)
    if data_mb:
        add_data(eng, src, data_mb)
    eng.start(src, wait_boot=True)
    size = tree_bytes(eng.layout.private(src))
    private = eng.layout.private(src)
    pool = eng.layout.pool
    snapdir = eng.layout.snapshot_dir(src)
    keys = ("snapshot", "linked clone", "full clone", "backup", "restore", "send | receive")
    ours: dict[str, list[float]] = {k: [] for k in keys}
    raw: dict[str, list[float]] = {k: [] for k in keys}
    cleanup: list[Path] = []

    def fresh(name: str) -> Path:
        """A new read-only snapshot of the VE (untimed): the raw tools read a tree as cold as ours do."""
        snapdir.mkdir(parents=True, exist_ok=True)
        path = snapdir / name
        sh(f"btrfs -q subvolume snapshot -r '{private}' '{path}'")
        cleanup.append(path)
        return path

    def pair(key: str, i: int, mine, theirs) -> None:
        """Time ours and the raw tool, alternating which goes first, with the pool synced before each."""
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            sh(f"btrfs filesystem sync '{pool}'")
            (ours if who == 0 else raw)[key].append(timed(mine if who == 0 else theirs))

    for i in range(runs):
        print(f"  storage run {i + 1}/{runs}", file=sys.stderr, flush=True)
        snapdir.mkdir(parents=True, exist_ok=True)
        raw_snap = snapdir / f"raw{i}"
        cleanup.append(raw_snap)
        pair("snapshot", i, lambda n=i: eng.snapshot(src, f"b{n}"),
             lambda s=raw_snap: sh(f"btrfs -q subvolume snapshot -r '{private}' '{s}'"))
        raw_link = pool / "private" / f"rawlink{i}"
        cleanup.append(raw_link)
        pair("linked clone", i, lambda n=i: eng.clone(src, 7100 + n, linked=True),
             lambda d=raw_link: sh(f"btrfs -q subvolume snapshot '{private}' '{d}'"))
        raw_cp = pool / "private" / f"rawcp{i}"
        sh(f"btrfs -q subvolume create '{raw_cp}'")
        cleanup.append(raw_cp)
        s_cp = fresh(f"cp{i}")
        pair("full clone", i, lambda n=i: eng.clone(src, 7200 + n),
             lambda d=raw_cp, s=s_cp: sh(f"cp -a --reflink=never '{s}/.' '{d}/'"))
        recv = pool / "private" / f"rawrecv{i}"
        recv.mkdir()
        s_recv = fresh(f"recv{i}")
        cleanup.append(recv / s_recv.name)
        pair("send | receive", i, lambda n=i: eng.clone(src, 7400 + n),
             lambda d=recv, s=s_recv: sh(f"btrfs send -q '{s}' | btrfs receive -q '{d}'"))
        res = [None]
        raw_tar = work / f"raw{i}.tar.zst"
        s_tar = fresh(f"tar{i}")
        pair("backup", i, lambda r=res: r.__setitem__(0, eng.backup(src, work)),
             lambda t=raw_tar, s=s_tar: sh(
                 f"tar -c --numeric-owner --xattrs --xattrs-include='*' --acls -C '{s}' -f - . "
                 f"| zstd -q -T0 -3 -o '{t}'"))
        raw_x = pool / "private" / f"rawx{i}"
        sh(f"btrfs -q subvolume create '{raw_x}'")
        cleanup.append(raw_x)
        pair("restore", i, lambda n=i, a=res[0].path: eng.restore(a, 7300 + n),
             lambda t=raw_tar, d=raw_x: sh(
                 f"zstd -q -dc '{t}' | tar -x --numeric-owner --xattrs --xattrs-include='*' --acls -p "
                 f"-C '{d}' -f -"))
        for p in reversed(cleanup):
            if p.exists():
                btrfs_delete(p)
        cleanup.clear()
        recv.rmdir()
        for c in (7100 + i, 7200 + i, 7300 + i, 7400 + i):
            eng.destroy(c)
        res[0].path.unlink()
        raw_tar.unlink()
        sh(f"btrfs subvolume sync '{pool}'")  # let the cleaner finish, or it slows the next run down
    labels = {"snapshot": "btrfs subvolume snapshot -r", "linked clone": "btrfs subvolume snapshot",
              "full clone": "cp -a --reflink=never", "send | receive": "btrfs send | btrfs receive",
              "backup": "tar -c | zstd -T0 -3", "restore": "zstd -dc | tar -x"}
    rows = [("full clone" if k == "send | receive" else k, ours[k], labels[k], raw[k]) for k in keys]
    eng.destroy(src)
    return rows, size


def hold_memory(eng: Engine, ctid: int, mb: int) -> None:
    """A process inside the VE that allocates and touches ``mb`` MB and sleeps."""
    hog = f"my $x = \"\"; $x .= \"a\" x (1 << 20) for 1 .. {mb}; sleep 1 while 1"  # 1 MB at a time: no copy
    eng.exec(ctid, f"setsid perl -e '{hog}' </dev/null >/dev/null 2>&1 &")
    rel = eng.layout.cgroup_dir(ctid)
    from vzengine import cgroups

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stat = dict(line.split() for line in (cgroups.read("memory", rel, "memory.stat") or "").splitlines())
        if int(stat.get("total_rss", stat.get("anon", 0))) > mb << 20:
            return
        time.sleep(0.1)
    raise RuntimeError("the memory hog did not come up")


def bench_checkpoint(eng: Engine, template: str, runs: int) -> list:
    rows = []
    ctid = 7500
    eng.create(ctid, template)
    eng.start(ctid, wait_boot=True)
    lxc = ["lxc-checkpoint", "-P", str(eng.layout.lxcpath), "-n", str(ctid)]
    rawdir = eng.layout.root / "dump" / "raw"
    for state in ("idle", "256 MB touched"):
        if state != "idle":
            hold_memory(eng, ctid, 256)
        ours = {"suspend": [], "resume": []}
        raw = {"suspend": [], "resume": []}
        image = 0
        for i in range(runs):
            print(f"  checkpoint {state} run {i + 1}/{runs}", file=sys.stderr, flush=True)
            res = [None]
            ours["suspend"].append(timed(lambda r=res: r.__setitem__(0, eng.suspend(ctid))))
            image = res[0]["bytes"]
            ours["resume"].append(timed(lambda: eng.resume(ctid)))
            time.sleep(0.3)
            shutil.rmtree(rawdir, ignore_errors=True)
            rawdir.mkdir(mode=0o750, parents=True)
            os.chown(rawdir, eng.layout.idmap[0], 0)
            # bare lxc-checkpoint, told (as ours does) that lxcfs' files in /proc are external mounts
            external = checkpoint._external_mounts(eng.lxc.init_pid(ctid))
            dump_env = checkpoint._criu_env(eng, ctid, "rawdump", [
                f"external mnt[{m}]:{checkpoint._ext_key(m)}" for m, _ in external])
            restore_env = checkpoint._criu_env(eng, ctid, "rawrestore", checkpoint._restore_options(external))
            raw["suspend"].append(timed(lambda e=dump_env: subprocess.run(
                [*lxc, "-s", "-D", str(rawdir)], check=True, capture_output=True, env=e)))
            raw["resume"].append(timed(lambda e=restore_env: subprocess.run(
                [*lxc, "-r", "-d", "-D", str(rawdir)], check=True, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=e)))
            time.sleep(0.3)
        for key in ours:
            rows.append((f"{key} ({state})", ours[key], f"lxc-checkpoint {'-s' if key == 'suspend' else '-r'}",
                         raw[key], image))
    shutil.rmtree(rawdir, ignore_errors=True)
    eng.destroy(ctid)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--template", default="debian-12-sysv", help="template of the VEs (a sysvinit one, "
                                                                  "so it can be checkpointed)")
    ap.add_argument("--data-mb", type=int, default=0, help="extra data in the benchmarked VE, MB")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vzbench-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text('POOL_SIZE="12G"\n')
    work = root / "work"
    eng = Engine(root, lock_wait=30)
    try:
        eng.ensure_ready()
        work.mkdir()
        print(f"benchmarking storage on {args.template} ...", file=sys.stderr, flush=True)
        storage, size = bench_storage(eng, args.template, args.runs, args.data_mb, work)
        print("benchmarking suspend/resume ...", file=sys.stderr, flush=True)
        ckpt = bench_checkpoint(eng, args.template, args.runs)
    finally:
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    mb = size / 1e6
    print(f"vzengine snapshot/backup/checkpoint benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"kernel {os.uname().release}, CRIU {criu.version_string()}, {args.runs} runs")
    print(f"tree: a running {args.template} VE" + (f" plus {args.data_mb} MB of data" if args.data_mb else "") +
          f", {mb:.0f} MB; times in ms (min / median / max), MB/s from the median")
    print(f"{'operation':<14} {'vzengine':>26} {'MB/s':>8}   {'raw tool':<28} {'raw':>26} {'MB/s':>8}  ratio")
    for key, ours, label, raw in storage:
        mo, mr = statistics.median(ours), statistics.median(raw)
        print(f"{key:<14} {fmt(ours)} {mb / mo:8.0f}   {label:<28} {fmt(raw)} {mb / mr:8.0f}  {mo / mr:5.2f}x")
    print(f"{'checkpoint':<26} {'vzengine':>26}   {'raw tool':<20} {'raw':>26}  ratio  images")
    for key, ours, label, raw, image in ckpt:
        ratio = statistics.median(ours) / statistics.median(raw)
        print(f"{key:<26} {fmt(ours)}   {label:<20} {fmt(raw)}  {ratio:5.2f}x  {image / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
