"""Time ``Engine.create`` of N VEs in a row on a simple-quota pool and on a full-qgroup pool.

    sudo .venv/bin/python bench/quota_create_bench.py [--count 20] [--template debian-12-sysv]

Each mode gets a fresh engine root under /var/tmp (POOL_QUOTA="simple" or "full" in vz.conf).
Each VE writes 1 MiB after create, as a running VE would, so later creates have extents to
account. Prints the create times per mode (first, median, last, max) and the time to read the
usage of all VEs at the end. Everything it made is purged, even when it fails.
The figures jitter on a shared machine: compare orders of magnitude, not digits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import free_test_net
from vzengine import Engine
from vzengine.resources import ResourcesFeature


def run_mode(mode: str, count: int, template: str) -> dict:
    net = free_test_net()
    root = Path(tempfile.mkdtemp(prefix=f"vzqbench-{mode}-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'POOL_SIZE="8G"\nPOOL_QUOTA="{mode}"\nIP_POOL="{net.pool}"\n'
                                  f'IP6_POOL="{net.pool6}"\n')
    try:
        eng = Engine(root)
        eng.ensure_ready()
        eng.templates.ensure(template)
        times = []
        for i in range(count):
            ctid = 900 + i
            t0 = time.perf_counter()
            eng.create(ctid, template, diskspace="1G")
            times.append((time.perf_counter() - t0) * 1000)
            with open(eng.layout.private(ctid) / "root/own", "wb") as f:
                f.write(os.urandom(1 << 20))
        res = next(f for f in eng.features if isinstance(f, ResourcesFeature))
        res.usage_all()
        t0 = time.perf_counter()
        res.usage_all()
        usage_ms = (time.perf_counter() - t0) * 1000
        return {"mode": eng.storage.pool_info()["quota_mode"], "times": times, "usage_all_ms": usage_ms}
    finally:
        Engine(root).purge()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--template", default="debian-12-sysv")
    args = ap.parse_args()
    print(f"{args.count} creates of {args.template}, ms per create")
    print(f"{'pool mode':10} {'first':>8} {'median':>8} {'last':>8} {'max':>8} {'usage all':>10}")
    for mode in ("simple", "full"):
        r = run_mode(mode, args.count, args.template)
        t = r["times"]
        print(f"{r['mode']:10} {t[0]:8.1f} {statistics.median(t):8.1f} {t[-1]:8.1f} {max(t):8.1f} "
              f"{r['usage_all_ms']:10.2f}")


if __name__ == "__main__":
    main()
