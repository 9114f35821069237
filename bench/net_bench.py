"""Benchmark VE networking against plain network namespaces joined by veths, in one run.

    sudo .venv/bin/python bench/net_bench.py [--runs 3] [--seconds 3]

Measures, each against the same measure between plain namespaces on this machine:
  * TCP throughput (iperf3) and round-trip time (ping) VE to VE and VE to host, against two
    plain namespaces joined by one veth, and a namespace joined to the host by a veth; also
    against two plain namespaces routed through the host (the VE topology without our rules),
    which separates the cost of the routed topology from that of the engine's rules;
  * the time to add an address to a running VE (Engine.set and `vzctl set`), against the raw
    `ip addr add` + `ip route add` that do the same by hand;
  * the time to start a VE with addresses, without, and bare `lxc-start` of a twin.

The VE templates do not ship iperf3, so the host's iperf3 and BusyBox ping run inside each
VE's network namespace (nsenter -n): the packets take exactly the VE's path (its eth0, its
veth, the host's routing and rules), only the binary comes from the host. Everything stays on
this machine: private addresses in namespaces this script makes and removes again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vzengine import Engine
from vzengine.network import ifname

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
VZCTL = Path(sys.executable).parent / "vzctl"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ns(pid: int | None) -> list[str]:
    """The prefix that runs a command in pid's network namespace (None: the host)."""
    return ["nsenter", "-t", str(pid), "-n"] if pid else []


class PlainNetns:
    """A bare network namespace held by a sleeping process (gone when it is killed)."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", "3600"])
        self.pid = self.proc.pid
        host = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{self.pid}/ns/net") == host and time.monotonic() < deadline:
            time.sleep(0.01)

    def run(self, *cmd: str) -> None:
        sh(*ns(self.pid), *cmd)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def iperf(server_pid: int | None, client_pid: int | None, addr: str, seconds: int, port: int = 5299) -> float:
    """TCP throughput client → server in Gbit/s (iperf3, server at addr)."""
    server = subprocess.Popen([*ns(server_pid), "iperf3", "-s", "-1", "-B", addr, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            out = sh(*ns(server_pid), "ss", "-Htln", f"sport = :{port}", check=False).stdout
            if out.strip():
                break
            time.sleep(0.02)
        res = sh(*ns(client_pid), "iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J")
        return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.wait(timeout=10)


def rtt(client_pid: int | None, addr: str, count: int = 200) -> float:
    """Average ping round trip in microseconds (BusyBox ping, 5 ms apart)."""
    six = ["-6"] if ":" in addr else []
    res = sh(*ns(client_pid), BUSYBOX, "ping", *six, "-q", "-c", str(count), "-i", "0.005", addr)
    m = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    return float(m.group(1)) * 1000


def stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="length of each iperf3 run")
    args = ap.parse_args()
    if not shutil.which("iperf3"):
        print("net_bench needs iperf3: apt-get install iperf3", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="vznetbench-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    # HOST_PORTS: the VE -> host case needs the host's iperf3 port open to VEs (closed by default)
    (root / "vz.conf").write_text('STORAGE="dir"\nIP_POOL="10.75.0.0/24"\nIP6_POOL="fd75::/64"\nHOST_PORTS="tcp:5299"\n')
    eng = Engine(root, lock_wait=30)
    plain: list[PlainNetns] = []
    links: list[str] = []
    rows: list[tuple[str, str, list[float], str, list[float]]] = []
    try:
        eng.ensure_ready()
        print("setting up VEs and plain namespaces ...", file=sys.stderr, flush=True)
        a, b, twin, bare = 101, 102, 103, 104
        eng.create(a, "tiny", ipadd=["10.75.0.11", "fd75::11"])
        eng.create(b, "tiny", ipadd=["10.75.0.12", "fd75::12"])
        eng.create(twin, "tiny")
        eng.create(bare, "tiny")
        eng.start(a, wait_boot=True)
        eng.start(b, wait_boot=True)
        pa, pb = eng.lxc.init_pid(a), eng.lxc.init_pid(b)

        # two plain namespaces joined by one veth
        n1, n2 = PlainNetns(), PlainNetns()
        plain += [n1, n2]
        sh("ip", "link", "add", "vzb1", "netns", str(n1.pid), "type", "veth", "peer", "name", "vzb2",
           "netns", str(n2.pid))
        for n, addr in ((n1, "10.75.1.1"), (n2, "10.75.1.2")):
            n.run("ip", "link", "set", "lo", "up")
            n.run("ip", "link", "set", "vzb1" if n is n1 else "vzb2", "up")
            n.run("ip", "addr", "add", f"{addr}/30", "dev", "vzb1" if n is n1 else "vzb2")
        # a plain namespace joined to the host by a veth
        n3 = PlainNetns()
        plain.append(n3)
        sh("ip", "link", "add", "vzbh3", "type", "veth", "peer", "name", "eth0", "netns", str(n3.pid))
        links.append("vzbh3")
        sh("ip", "link", "set", "vzbh3", "up")
        sh("ip", "addr", "add", "10.75.2.1/30", "dev", "vzbh3")
        n3.run("ip", "link", "set", "lo", "up")
        n3.run("ip", "link", "set", "eth0", "up")
        n3.run("ip", "addr", "add", "10.75.2.2/30", "dev", "eth0")
        # two plain namespaces routed through the host, like VEs but without the engine's rules
        routed = []
        for i in (4, 5):
            n = PlainNetns()
            plain.append(n)
            routed.append(n)
            sh("ip", "link", "add", f"vzbh{i}", "type", "veth", "peer", "name", "eth0", "netns", str(n.pid))
            links.append(f"vzbh{i}")
            sh("ip", "link", "set", f"vzbh{i}", "up")
            sh("ip", "addr", "add", f"10.75.{i}.1/32", "dev", f"vzbh{i}")
            sh("ip", "route", "add", f"10.75.{i}.2/32", "dev", f"vzbh{i}")
            n.run("ip", "link", "set", "lo", "up")
            n.run("ip", "link", "set", "eth0", "up")
            n.run("ip", "addr", "add", f"10.75.{i}.2/32", "dev", "eth0")
            n.run("ip", "route", "add", "default", "via", f"10.75.{i}.1", "dev", "eth0", "onlink")
        n4, n5 = routed

        cases = [
            # (measure, ours: (server pid, client pid, address), baseline label, baseline ...)
            ("VE -> VE", (pb, pa, "10.75.0.12"), "netns -> netns, one veth", (n2.pid, n1.pid, "10.75.1.2")),
            ("VE -> host", (None, pa, "10.75.0.1"), "netns -> host, one veth", (None, n3.pid, "10.75.2.1")),
            ("VE -> VE", (pb, pa, "10.75.0.12"), "netns -> netns via host", (n5.pid, n4.pid, "10.75.5.2")),
        ]
        print(f"throughput and latency ({args.runs} x {args.seconds} s iperf3, 200 pings each) ...",
              file=sys.stderr, flush=True)
        for what, ours, label, base in cases:
            tp_ours, tp_base, rtt_ours, rtt_base = [], [], [], []
            for _ in range(args.runs):
                tp_ours.append(iperf(*ours, args.seconds))
                tp_base.append(iperf(*base, args.seconds))
                rtt_ours.append(rtt(ours[1], ours[2]))
                rtt_base.append(rtt(base[1], base[2]))
            rows.append((f"{what} TCP Gbit/s", "tp", tp_ours, label, tp_base))
            rows.append((f"{what} RTT us", "rtt", rtt_ours, label, rtt_base))
        rtt6 = [rtt(pa, "fd75::12") for _ in range(args.runs)]
        rtt6_host = [rtt(pa, "fd75::1") for _ in range(args.runs)]

        print("adding addresses to a running VE ...", file=sys.stderr, flush=True)
        add_ours, add_cli, add_raw = [], [], []
        veth = ifname(eng.layout.tag, a)
        for i in range(max(args.runs, 5)):
            addr = f"10.75.0.{100 + i}"
            add_ours.append(timed(lambda ad=addr: eng.set(a, ipadd=[ad])))
            eng.set(a, ipdel=[addr])
            add_cli.append(timed(lambda ad=addr: sh(str(VZCTL), "--root", str(root), "-q", "set", str(a),
                                                      "--ipadd", ad, "--save")))
            sh(str(VZCTL), "--root", str(root), "-q", "set", str(a), "--ipdel", addr, "--save")
            raw = f"10.75.0.{200 + i}"

            def by_hand(ad=raw) -> None:
                sh(*ns(pa), "ip", "addr", "add", f"{ad}/32", "dev", "eth0")
                sh("ip", "route", "add", f"{ad}/32", "dev", veth)

            add_raw.append(timed(by_hand))
            sh(*ns(pa), "ip", "addr", "del", f"{raw}/32", "dev", "eth0")
            sh("ip", "route", "del", f"{raw}/32", "dev", veth)
        rows.append(("add an address (Engine.set)", "ms", add_ours, "ip addr add + ip route add", add_raw))
        rows.append(("add an address (vzctl set)", "ms", add_cli, "ip addr add + ip route add", add_raw))

        print("starting VEs with and without addresses ...", file=sys.stderr, flush=True)
        eng.set(twin, ipadd=["10.75.0.13", "fd75::13"])
        start_net, start_plain, start_raw = [], [], []
        lxcpath = str(eng.layout.lxcpath)
        for _ in range(max(args.runs, 5)):
            start_net.append(timed(lambda: eng.start(twin)))
            start_plain.append(timed(lambda: eng.start(bare)))
            eng.stop(twin, fast=True)
            eng.stop(bare, fast=True)
            eng.start(bare)  # write its LXC config as the engine does, then start it bare
            eng.stop(bare, fast=True)
            start_raw.append(timed(lambda: sh("lxc-start", "-P", lxcpath, "-n", str(bare))))
            sh("lxc-stop", "-P", lxcpath, "-n", str(bare), "-k")
        rows.append(("start, 1+1 addresses", "ms", start_net, "lxc-start (init runs)", start_raw))
        rows.append(("start, no address", "ms", start_plain, "lxc-start (init runs)", start_raw))

        # The start-host hook every VE's LXC config carries: what it costs inside lxc-start when the
        # engine starts the VE (it exits at once), and after a reboot inside (it sets the network up).
        hook = str(eng.layout.rundir / "vz-net-hook")
        lock = eng.layout.lockdir / f"{twin}.lock"
        hook_engine, hook_reboot, shell = [], [], []
        for _ in range(max(args.runs, 5)):
            lock.write_text(f"start (pid {os.getpid()})")
            hook_engine.append(timed(lambda: sh(hook, str(twin), "lxc", "start-host")))
            lock.write_text("")
            shell.append(timed(lambda: sh("/bin/sh", "-c", "exit 0")))
        eng.start(twin)
        for _ in range(max(args.runs, 3)):
            pid = eng.lxc.init_pid(twin)
            env = dict(os.environ, LXC_PID=str(pid))
            hook_reboot.append(timed(lambda e=env: subprocess.run([hook, str(twin), "lxc", "start-host"], env=e,
                                                                  check=True)))
        eng.stop(twin, fast=True)
        rows.append(("hook, engine start", "ms", hook_engine, "sh -c 'exit 0'", shell))
        rows.append(("hook, reboot inside", "ms", hook_reboot, "sh -c 'exit 0'", shell))
    finally:
        for n in plain:
            n.close()
        for link in links:
            sh("ip", "link", "del", link, check=False)
        with contextlib.suppress(Exception):
            eng.purge()
        shutil.rmtree(root, ignore_errors=True)

    print(f"vzengine network benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel "
          f"{os.uname().release}, load {os.getloadavg()[0]:.2f}, {args.runs} runs (min / median / max)")
    print("iperf3 and ping are the host's binaries run in each VE's network namespace (nsenter -n): "
          "same network path, host binary.")
    print(f"{'measure':<28} {'vzengine':>26}   {'baseline':<28} {'baseline':>26}  ratio")
    for what, unit, ours, label, base in rows:
        if unit == "ms":
            ours_s, base_s = [x * 1000 for x in ours], [x * 1000 for x in base]
            fmt = "{:8.1f} {:8.1f} {:8.1f}"
        elif unit == "tp":
            ours_s, base_s = ours, base
            fmt = "{:8.2f} {:8.2f} {:8.2f}"
        else:
            ours_s, base_s = ours, base
            fmt = "{:8.1f} {:8.1f} {:8.1f}"
        ratio = statistics.median(ours_s) / statistics.median(base_s)
        print(f"{what:<28} {fmt.format(*stats(ours_s)):>26}   {label:<28} {fmt.format(*stats(base_s)):>26}  "
              f"{ratio:5.2f}x")
    print(f"{'VE -> VE IPv6 RTT us':<28} {'{:8.1f} {:8.1f} {:8.1f}'.format(*stats(rtt6)):>26}")
    print(f"{'VE -> host IPv6 RTT us':<28} {'{:8.1f} {:8.1f} {:8.1f}'.format(*stats(rtt6_host)):>26}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
