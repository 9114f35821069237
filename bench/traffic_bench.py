"""What one traffic pass costs the node agent at 1,000 VEs: the `traffic_counters` operation alone.

Run as root: `.venv/bin/python bench/traffic_bench.py [--ves 1000]`. It makes a throw-away engine root under
/var/tmp with N VE configs, each with kept traffic (a "total" and one ended run, as the engine leaves them), and,
in a network and mount namespace of its own (nothing appears on the host), a veth pair under each VE's
veth name, so every VE reads as running: the operation's worst case. Prints the time of one pass (p50 of 7).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ves", type=int, default=1000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("traffic_bench: run as root")
    if not args.inside:  # a private network and mount namespace: the veths and their sysfs are ours alone
        os.execvp("unshare", ["unshare", "-n", "-m", "--propagation", "private", sys.executable, __file__,
                              "--ves", str(args.ves), "--inside"])
    subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)
    root = Path(tempfile.mkdtemp(prefix="vzbench-traffic-", dir="/var/tmp"))
    try:
        run(root, args.ves)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, n: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vzpanel.settings")
    from vzengine import Engine
    from vzengine.network import ifname
    from vzpanel.agent import ops

    (root / "conf").mkdir()
    eng = Engine(root)
    ctids = range(1000, 1000 + n)
    for ctid in ctids:
        (root / "conf" / f"{ctid}.conf").write_text('HOSTNAME="bench"\n')
        d = root / "traffic" / str(ctid)
        d.mkdir(parents=True)
        (d / "total").write_text("1000 10 2000 20\nold-run-1\n")
        (d / "boot-9").write_text("500 5 600 6\n")
    batch = "".join(f"link add {ifname(eng.layout.tag, c)} type veth peer name bp{c}\n" for c in ctids)
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    context = ops.Context(eng, root / "backups", lambda *_: None)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        report = ops.OPS["traffic_counters"].run(context)
        times.append(time.perf_counter() - started)
    assert len(report) == n and all(r["run"] for r in report.values())
    times.sort()
    print(f"traffic_counters over {n} VEs (all running): p50 {times[3] * 1000:.0f} ms, "
          f"min {times[0] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
