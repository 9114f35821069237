"""Benchmark how much a noisy VE disturbs its neighbour, against the same host idle, in one run.

    sudo .venv/bin/python bench/noisy_bench.py [--seconds 10]

One VE (the noisy one, on a hosting plan's limits: see PLAN) runs, one at a time: a fork bomb,
a memory hog, a disk filler, a CPU hog, a disk I/O hog, a UDP flood and a connection flood at its
neighbour. Meanwhile three probes measure the neighbour VE (default limits), each as p50 and p99:

  * echo RTT: a 32-byte round trip over one TCP connection from the host to an echo server in
    the neighbour (every 10 ms);
  * CPU task: a fixed small computation (~1 ms idle) in the neighbour, every 25 ms, wall time;
  * vzlist: `vzlist -H` of the root, back to back (a cheap engine call, as an admin makes it).

The same probes run first with the host idle, and again at the end (how much the host itself
drifted: on a shared machine, other people's work shows too); the table gives each phase's ratio
to the first idle window.
The echo server and CPU probe are the host's Python run in the neighbour's cgroups and network
namespace (so they compete exactly as the VE's own processes do); the connection flooder is the
same in the noisy VE's. Everything stays on this machine (a private engine root with its own
pool, removed at the end); every process is bounded in time and stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile, stop_process

from vzengine import Engine
from vzengine.cgroups import mounts

VZLIST = Path(sys.executable).parent / "vzlist"
POOL = "10.76.7"  # the benchmarks' range (10.75-79), never picked by the tests
NOISY, QUIET = 9701, 9702
# a small hosting plan for the noisy VE (the neighbour keeps the node's defaults)
PLAN = {"ram": "256M", "swap": "0", "numproc": "256", "cpus": "1", "diskspace": "1G", "iolimit": "50M",
        "rate": "100M", "conntrack": "4096"}

FORK_BOMB = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:  # every process forks for ever: the VE stays at its process limit
    try:
        os.fork()
    except OSError:
        pass
"""

UDP_FLOOD = r"""
import socket, sys, time
end, addr = time.monotonic() + float(sys.argv[1]), sys.argv[2]
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
for s in socks:
    s.setblocking(False)
msg = b"x" * 64
while time.monotonic() < end:  # 64 source ports (and new ones now and then: more conntrack entries)
    for i, s in enumerate(socks):
        try:
            s.sendto(msg, (addr, 9 + i % 8))
        except OSError:
            pass
    socks.append(socks.pop(0).close() or socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    socks[-1].setblocking(False)
"""

CONN_FLOOD = r"""
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
end, addr, held = time.monotonic() + float(sys.argv[1]), sys.argv[2], []
while time.monotonic() < end:  # connections to the neighbour's echo server, held open
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((addr, 7)); held.append(s)
    if len(held) > 15000:
        held.pop(0).close()
"""

# Each noisy workload: ("sh", a BusyBox sh command started detached inside the VE), or ("py", the
# host's Python in the VE's cgroups and network and pid namespaces: BusyBox has no UDP client, and
# its sh gives up at the first failed fork). Every one ends when the VE is stopped after its window.
WORKLOADS = {
    "fork bomb": ("py", FORK_BOMB),
    "memory hog": ("sh", "while :; do dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null; done"),
    "disk filler": ("sh", "i=0; while dd if=/dev/zero of=/fill.$i bs=1M count=64 2>/dev/null; do i=$((i+1)); "
                          "done; sleep 600"),
    "CPU hog": ("sh", "for i in 1 2 3 4; do (while :; do :; done) & done; wait"),
    "disk I/O hog": ("sh", "while :; do dd if=/dev/zero of=/io.tmp bs=1M count=128 oflag=direct 2>/dev/null; "
                           "dd if=/io.tmp of=/dev/null bs=1M iflag=direct 2>/dev/null; done"),
    "UDP flood": ("py", UDP_FLOOD),
    "conn flood": ("py", CONN_FLOOD),
}

ECHO_SERVER = r"""
import asyncio, sys
async def handle(r, w):
    try:
        while data := await r.read(256):
            w.write(data); await w.drain()
    except OSError:
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", 7, backlog=1024)
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[1]))
asyncio.run(main())
"""

CPU_PROBE = r"""
import json, sys, time
end, out = time.monotonic() + float(sys.argv[1]), []
while time.monotonic() < end:
    t0 = time.perf_counter()
    x = 0
    for i in range(30000):
        x += i * i
    out.append(time.perf_counter() - t0)
    time.sleep(0.025)
print(json.dumps(out))
"""



def cgroup_dirs(pid: int) -> list[Path]:
    """The cgroup directories of process ``pid``, one per hierarchy."""
    v1, v2 = mounts()
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        base = v2 if not ctrls else v1.get(ctrls.split(",")[0])
        if base is not None:
            out.append(base / rel.lstrip("/"))
    return out


def spawn_in_ve(eng: Engine, ctid: int, argv: list[str], pidns: bool = False, **kw) -> subprocess.Popen:
    """Run a host program in VE ``ctid``'s cgroups and network namespace (and pid namespace: then
    it ends with the VE)."""
    pid = eng.lxc.init_pid(ctid)
    dirs = cgroup_dirs(pid)

    def join() -> None:
        for d in dirs:
            with contextlib.suppress(OSError):
                (d / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(["nsenter", "-t", str(pid), "-n", *(["-p"] if pidns else []), *argv], preexec_fn=join,
                            **kw)


class Probes:
    """The three measures of the neighbour, run together for one window."""

    def __init__(self, eng: Engine, root: Path, seconds: float):
        self.eng, self.root, self.seconds = eng, root, seconds

    def run(self) -> dict[str, list[float]]:
        res: dict[str, list[float]] = {"echo": [], "cpu": [], "vzlist": []}
        cpu = spawn_in_ve(self.eng, QUIET, [sys.executable, "-c", CPU_PROBE, str(self.seconds)],
                          stdout=subprocess.PIPE, text=True)
        end = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self._echo, args=(end, res["echo"])),
                   threading.Thread(target=self._vzlist, args=(end, res["vzlist"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            out, _ = cpu.communicate(timeout=self.seconds + 30)
            res["cpu"] = json.loads(out or "[]")
        finally:
            stop_process(cpu, 5)
        return res

    def _echo(self, end: float, out: list[float]) -> None:
        msg = b"x" * 32
        s = None
        while time.monotonic() < end:
            try:
                if s is None:
                    s = socket.create_connection((f"{POOL}.2", 7), timeout=2)
                t0 = time.perf_counter()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(64)
                    if not chunk:
                        raise OSError("closed")
                    got += chunk
                out.append(time.perf_counter() - t0)
            except OSError:
                out.append(2.0)  # a lost round trip counts as the timeout
                with contextlib.suppress(Exception):
                    s.close()
                s = None
            time.sleep(0.01)
        if s is not None:
            s.close()

    def _vzlist(self, end: float, out: list[float]) -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            subprocess.run([str(VZLIST), "--root", str(self.root), "-H"], capture_output=True, timeout=60)
            out.append(time.perf_counter() - t0)
            time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10, help="length of each measured window")
    ap.add_argument("--only", default="", help="comma-separated workloads to run (default: all)")
    ap.add_argument("--plan", action="append", default=[], metavar="KEY=VALUE",
                    help="change the noisy VE's plan, e.g. --plan cpumask=0")
    args = ap.parse_args()
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    if any(w not in WORKLOADS for w in only):
        ap.error(f"--only takes some of: {', '.join(WORKLOADS)}")
    for item in args.plan:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--plan takes KEY=VALUE, not {item!r}")
        PLAN[key.strip()] = value.strip()
    root = Path(tempfile.mkdtemp(prefix="vzbench-noisy-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'POOL_SIZE="6G"\nIP_POOL="{POOL}.0/24"\nIP6_POOL="fd76:7::/64"\n')
    eng = Engine(root, lock_wait=60)
    procs: list[subprocess.Popen] = []
    results: dict[str, dict[str, list[float]]] = {}
    done: dict[str, str] = {}
    t_start = time.monotonic()
    try:
        eng.ensure_ready()
        eng.create(NOISY, "tiny", ipadd=[f"{POOL}.3"], **PLAN)
        eng.create(QUIET, "tiny", ipadd=[f"{POOL}.2"])
        for ctid in (NOISY, QUIET):
            eng.start(ctid, wait_boot=True)
        echo = spawn_in_ve(eng, QUIET, [sys.executable, "-c", ECHO_SERVER, "900"], stdout=subprocess.PIPE, text=True)
        procs.append(echo)
        assert echo.stdout.readline().strip() == "ready"
        probes = Probes(eng, root, args.seconds)
        phases = ["idle", *(only or WORKLOADS), "idle again"]  # the last one shows how much the host drifted
        for phase in phases:
            print(f"{phase} ...", file=sys.stderr, flush=True)
            flooder = None
            kind, what = WORKLOADS.get(phase, ("", ""))
            if kind == "py":
                flooder = spawn_in_ve(eng, NOISY, [sys.executable, "-c", what, str(args.seconds + 5), f"{POOL}.2"],
                                      pidns=True)
                procs.append(flooder)
            elif kind == "sh":
                r = eng.exec(NOISY, f"setsid sh -c '{_quote(what)}' </dev/null >/dev/null 2>&1 &")
                if r.returncode != 0:
                    raise RuntimeError(f"{phase}: {r.stderr.strip()}")
            if kind:
                time.sleep(2)  # let it build up
            before = eng.usage(NOISY)
            results[phase] = probes.run()
            done[phase] = did(before, eng.usage(NOISY), args.seconds)
            if kind:
                stop_process(flooder, 5)
                eng.stop(NOISY, fast=True)
                eng.start(NOISY, wait_boot=True)
                if phase in ("disk filler", "disk I/O hog"):
                    eng.exec(NOISY, "rm -f /fill.* /io.tmp")
    finally:
        for p in procs:
            stop_process(p, 5)
        eng.purge()
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - t_start

    print(f"noisy-neighbour benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel "
          f"{os.uname().release}, {args.seconds:g} s per phase, {elapsed:.0f} s in all")
    print("noisy VE's plan: " + ", ".join(f"{k}={v}" for k, v in PLAN.items()) + "; the neighbour has the defaults")
    print("times in ms, p50 / p99 (ratio of p50 and p99 to idle)")
    print(f"{'noisy VE runs':<14} {'echo RTT':>27} {'CPU task':>27} {'vzlist':>29}   what the noisy VE did")
    idle = results.get("idle")
    for phase, res in results.items():
        cells = []
        for key in ("echo", "cpu", "vzlist"):
            xs = res[key]
            if not xs:
                cells.append(f"{'-':>27}")
                continue
            p50, p99 = percentile(xs, 50) * 1000, percentile(xs, 99) * 1000
            if phase == "idle" or not idle or not idle[key]:
                cells.append(f"{p50:8.2f} /{p99:8.2f}          ")
            else:
                r50 = p50 / (percentile(idle[key], 50) * 1000)
                r99 = p99 / (percentile(idle[key], 99) * 1000)
                cells.append(f"{p50:8.2f} /{p99:8.2f} ({r50:4.1f}/{r99:4.1f})")
        print(f"{phase:<14} {cells[0]:>27} {cells[1]:>27} {cells[2]:>29}   {done.get(phase, '')}")
    return 0


def did(before: dict, after: dict, seconds: float) -> str:
    """What the noisy VE did in the window: CPUs used, processes, memory, OOM kills, disk, traffic out."""
    def delta(key: str) -> float:
        return (after.get(key) or 0) - (before.get(key) or 0)

    return (f"noisy: {delta('cpu_seconds') / seconds:.2f} CPUs, {after.get('nproc') or 0} procs, "
            f"{(after.get('memory_bytes') or 0) >> 20} MB, {int(delta('oom_kills'))} OOM kills, "
            f"disk {(after.get('disk_bytes') or 0) >> 20} MB, out {delta('net_out_bytes') * 8 / seconds / 1e6:.0f} Mbit/s")


def _quote(cmd: str) -> str:
    """``cmd`` for inside single quotes."""
    return cmd.replace("'", "'\\''")


if __name__ == "__main__":
    sys.exit(main())
