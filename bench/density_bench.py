"""Benchmark density: what one more VE, and the node as a whole, cost as idle VEs add up (issue 18).

    sudo .venv/bin/python bench/density_bench.py [--steps 0,100,250,500,1000] [--template debian-12-sysv]
    sudo .venv/bin/python bench/density_bench.py --ci          # N = 0, 10, 20 with the tiny template, fast

Brings up N idle VEs, each with one routed address from a private /16 that nothing on the host
routes, and at each N in --steps prints:

- create and start of one more VE (with an address) against a bare `btrfs subvolume snapshot` of the
  same template and a bare `lxc-start` of a twin VE (same template and kind of LXC config, no
  address) at the same N, and the ratios;
- host memory per VE: the drop of MemAvailable since N = 0, divided by N;
- `vzlist -a` (the CLI, a new process each time) and the node agent's reconcile-sized call
  (vzpanel/agent/ops.py `_list` with usage, in this process), median of three;
- a ping round trip from inside one VE to another's address (median of the pings' averages);
- the 1-minute load average after --settle seconds of idling.

It uses a private engine root under /var/tmp (as the tests' vz_root does) and purges it at the
end, also after an error, Ctrl-C or SIGTERM. --budget stops ramping up (not the cleanup) after that
many seconds, so a run fits a time slot.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vzengine import Engine
from vzpanel.agent import ops

FLEET_BASE = 10000  # ctids of the idle VEs: 10000, 10001, ...
PROBE, PEER, TWIN = 9001, 9002, 9003  # the VE created at each step, its ping peer, the raw tools' twin
PER_NET = 250  # addresses used in each /24 of the /16 pool


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def host_networks() -> list:
    """Every network the host routes (any table) or has an address in, but the default routes."""
    out = []
    for cmd in (["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "addr"]):
        data = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout or "[]")
        items = [a for link in data for a in link.get("addr_info", [])] if cmd[-1] == "addr" else data
        for item in items:
            dst = f"{item['local']}/{item['prefixlen']}" if "local" in item else item.get("dst", "default")
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(dst, strict=False)
                if net.prefixlen and net.version == 4:
                    out.append(net)
    return out


def free_pool() -> ipaddress.IPv4Network:
    """A random 10.X.0.0/16 that overlaps nothing the host routes; 10.75-79 (the engine's default and the
    other benchmarks) and 10.200-249 (the panel's tests) are never picked."""
    taken = host_networks()
    choices = [x for x in range(16, 200) if not 75 <= x <= 79]
    random.SystemRandom().shuffle(choices)
    for x in choices:
        net = ipaddress.ip_network(f"10.{x}.0.0/16")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.X.0.0/16 on this host")


class Density:
    """A private engine root holding the idle fleet; ``close`` purges it."""

    def __init__(self, template: str, pool: ipaddress.IPv4Network):
        self.template = template
        self.pool = pool
        self.root = Path(tempfile.mkdtemp(prefix="vzdensity-", dir="/var/tmp"))
        os.chmod(self.root, 0o711)
        x = pool.network_address.packed[1]
        (self.root / "vz.conf").write_text(
            f'POOL_SIZE="16G"\nIP_POOL="{pool}"\nIP6_POOL="fd{x:02x}:d::/64"\n')
        self.eng = Engine(self.root, lock_wait=60)
        self.fleet: list[int] = []
        self.vzlist = [str(Path(sys.executable).with_name("vzlist")), "--root", str(self.root), "-a"]

    def address(self, i: int) -> str:
        """The address of fleet VE i (i >= 0), or of a probe (i < 0): 10.X.(1+i//250).(1+i%250), probes in .255.x."""
        base = int(self.pool.network_address)
        if i < 0:
            return str(ipaddress.IPv4Address(base + 255 * 256 + 10 - i))
        return str(ipaddress.IPv4Address(base + (1 + i // PER_NET) * 256 + 1 + i % PER_NET))

    def setup(self) -> None:
        self.eng.ensure_ready()
        self.tpl_root = self.eng.templates.ensure(self.template)
        self.boot_check = self.eng.templates.spec(self.template).boot_check

    def grow(self, n: int) -> None:
        """Create and start fleet VEs until n run (not waiting for each to boot: the step waits for the last)."""
        while len(self.fleet) < n:
            i = len(self.fleet)
            ctid = FLEET_BASE + i
            self.eng.create(ctid, self.template, ipadd=[self.address(i)])
            self.fleet.append(ctid)
            self.eng.start(ctid)
            if i % 25 == 24:
                print(f"  {i + 1} VEs running", file=sys.stderr, flush=True)
        if self.fleet:
            self.eng.wait_booted(self.fleet[-1], timeout=300)

    def one_more(self) -> dict:
        """Create and start PROBE (ours) and TWIN (bare tools) at the current N; ping PROBE -> PEER."""
        eng, out = self.eng, {}
        snap = eng.layout.private(TWIN)
        out["snapshot"] = timed(lambda: sh("btrfs", "-q", "subvolume", "snapshot", str(self.tpl_root), str(snap)))
        sh("btrfs", "-q", "subvolume", "delete", str(snap))
        out["create"] = timed(lambda: eng.create(PROBE, self.template, ipadd=[self.address(-1)]))
        out["start"] = timed(lambda: eng.start(PROBE))
        eng.create(TWIN, self.template)
        eng.prepare_root(eng.config(TWIN))  # what start does before lxc-start: the id-mapped root
        out["lxc-start"] = timed(lambda: sh("lxc-start", "-P", str(eng.layout.lxcpath), "-n", str(TWIN)))
        eng.create(PEER, self.template, ipadd=[self.address(-2)])
        eng.start(PEER, wait_boot=True)
        eng.wait_booted(PROBE)
        out["ping"] = self.ping(PROBE, self.address(-2))
        sh("lxc-stop", "-P", str(eng.layout.lxcpath), "-n", str(TWIN), "-k")
        for ctid in (PROBE, PEER, TWIN):
            if eng.is_running(ctid):
                eng.stop(ctid, fast=True)
            eng.destroy(ctid)
        return out

    def ping(self, ctid: int, addr: str) -> float:
        """Median of three `ping -c 5` averages from inside VE ctid to addr, ms (busybox ping in tiny)."""
        avgs = []
        for _ in range(3):
            proc = self.eng.exec(ctid, f"ping -c 5 -i 0.2 -q {addr} || ping -c 5 -q {addr}", timeout=30)
            m = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
            if not m:
                raise RuntimeError(f"ping {addr} from VE {ctid} failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
            avgs.append(float(m.group(1)))
        return statistics.median(avgs)

    def vzlist_time(self) -> float:
        return statistics.median(timed(lambda: sh(*self.vzlist)) for _ in range(3))

    def reconcile_time(self) -> float:
        """The node agent's list with usage (ops._list), as a reconcile asks it, in this process."""
        ctx = ops.Context(self.eng, self.root / "backups", lambda *a: None)
        return statistics.median(timed(lambda: ops._list(ctx, usage=True)) for _ in range(3))

    def close(self) -> None:
        try:
            Engine(self.root).purge()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="0,100,250,500,1000", help="numbers of idle VEs to measure at")
    ap.add_argument("--template", default="debian-12-sysv", help="template of every VE (tiny: faster, smaller)")
    ap.add_argument("--settle", type=float, default=30, help="seconds to idle before reading the load average")
    ap.add_argument("--budget", type=float, default=0, help="stop ramping up after this many seconds (0: never)")
    ap.add_argument("--ci", action="store_true", help="N = 0, 10, 20 with the tiny template and a short settle")
    args = ap.parse_args()
    if args.ci:
        args.steps, args.template, args.settle = "0,10,20", "tiny", 2
    try:
        steps = sorted({int(s) for s in args.steps.split(",")})
    except ValueError:
        ap.error(f"--steps takes whole numbers separated by commas, not {args.steps!r}")
    if steps[0] < 0 or steps[-1] > 250 * 254:
        ap.error(f"--steps must lie within 0..{250 * 254}")
    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.monotonic()
    bench = Density(args.template, free_pool())
    rows = []
    try:
        print(f"setting up {bench.root} (pool {bench.pool}, template {args.template}) ...", file=sys.stderr, flush=True)
        bench.setup()
        time.sleep(2)
        mem0 = mem_available()
        for n in steps:
            if args.budget and n and time.monotonic() - t_start > args.budget:
                print(f"budget of {args.budget:g} s spent: stopping before N = {n}", file=sys.stderr, flush=True)
                break
            print(f"N = {n}: bringing up VEs ...", file=sys.stderr, flush=True)
            bench.grow(n)
            time.sleep(args.settle)
            row = {"n": n, "load": loadavg(), "mem": (mem0 - mem_available()) / n if n else None,
                   "vzlist": bench.vzlist_time(), "reconcile": bench.reconcile_time()}
            row.update(bench.one_more())
            rows.append(row)
            print_row(row, header=len(rows) == 1, args=args)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): cleaning up", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave VEs behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"removing {len(bench.fleet)} VEs and {bench.root} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        bench.close()
        print(f"cleaned up in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0 if rows and rows[-1]["n"] == steps[-1] else 1


def print_row(row: dict, header: bool, args) -> None:
    if header:
        print(f"vzengine density benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
              f"kernel {os.uname().release}, template {args.template}; times in ms; "
              f"load = 1-min average after {args.settle:g} s idle")
        print(f"{'N':>5} {'create':>7} {'snapshot':>8} {'ratio':>6} {'start':>7} {'lxc-start':>9} {'ratio':>6} "
              f"{'MB/VE':>6} {'vzlist -a':>9} {'reconcile':>9} {'ping':>6} {'load':>5}")
    mem = f"{row['mem'] / 2**20:6.1f}" if row["mem"] is not None else f"{'-':>6}"
    print(f"{row['n']:>5} {row['create'] * 1000:7.0f} {row['snapshot'] * 1000:8.1f} "
          f"{row['create'] / row['snapshot']:5.1f}x {row['start'] * 1000:7.0f} {row['lxc-start'] * 1000:9.0f} "
          f"{row['start'] / row['lxc-start']:5.2f}x {mem} {row['vzlist'] * 1000:9.0f} "
          f"{row['reconcile'] * 1000:9.1f} {row['ping']:6.3f} {row['load']:5.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
