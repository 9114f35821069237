"""Benchmark vzmigrate between two nodes on this machine, next to the bare tools, in one run.

    sudo .venv/bin/python bench/migration_bench.py [--runs 3] [--template debian-12-sysv]

The destination is a second node in a network namespace of the bench's own (tests/twonode.py) with
its own engine root, reached over SSH through an sshd started inside it (tests/sshnode.py). For an
idle VE of the template (sysvinit: it boots in well under a second), each run measures

    offline    vzmigrate of the stopped VE: total time and bytes sent (the template base, sent
               once to a destination that lacks it, is shown apart)
    restart    vzmigrate of the running VE: total time, the downtime vzmigrate reports (stop to
               started and booted on the destination), and the longest gap between answers to a
               ping sent every 10 ms from the destination's namespace to the VE's address
    live       vzmigrate --online of the running VE (CRIU dump here, resume there): total time, the
               freeze vzmigrate reports (dump to resumed on the destination) and the longest gap
               between answers to the same 10 ms pings
    bare       the same steps with the bare tools on the same kind of VE: btrfs send -p | ssh btrfs
               receive of the same increments, and lxc-stop, the last increment, lxc-start and the
               boot check (a VE without network: the floor under vzmigrate's downtime)

Uses private engine roots and removes them, the namespace and what runs in it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_test_net  # noqa: E402
from tests.sshnode import ALIAS, have_sshd, ssh_node  # noqa: E402
from tests.twonode import make_node  # noqa: E402
from vzengine import Engine  # noqa: E402
from vzengine.migrate import migrate  # noqa: E402

REMOTE = [sys.executable, "-m", "vzengine.cli.vzmigrate"]

# Pings ADDR every INTERVAL s until its standard input ends; prints the answers' statistics as JSON.
PINGER = r"""
import json, os, select, socket, struct, sys, threading, time
addr, interval = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, done, seq, sent, got = os.getpid() & 0xFFFF, threading.Event(), 0, 0, []
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
def csum(b):
    n = sum(struct.unpack("!%dH" % (len(b) // 2), b)); n = (n >> 16) + (n & 0xFFFF); n += n >> 16
    return ~n & 0xFFFF
nxt = time.monotonic()
while not done.is_set():
    now = time.monotonic()
    if now >= nxt:
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF) + b"vzmig-bench-pad!"
        s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr), ident, seq & 0xFFFF) + b"vzmig-bench-pad!", (addr, 0))
        seq, sent, nxt = seq + 1, sent + 1, nxt + interval
    r, _, _ = select.select([s], [], [], max(0.0, nxt - time.monotonic()))
    if r:
        data = s.recv(2048)
        off = (data[0] & 0x0F) * 4
        typ, _, _, rid, _ = struct.unpack("!BBHHH", data[off:off + 8])
        if typ == 0 and rid == ident:
            got.append(time.monotonic())
gaps = [b - a for a, b in zip(got, got[1:])]
print(json.dumps({"sent": sent, "answered": len(got), "longest_gap": max(gaps) if gaps else None}))
"""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


class Bench:
    def __init__(self, args, ns, ssh, src: Engine):
        self.args, self.ns, self.ssh, self.src = args, ns, ssh, src
        self.dst_root = ns.root
        self.ctids = iter(range(4100 + os.getpid() % 1000 * 10, 10**6))

    # --- helpers --------------------------------------------------------------------------
    def new_ve(self, start: bool) -> tuple[int, str]:
        ctid = next(self.ctids)
        self.src.create(ctid, self.args.template, ipadd=["auto"])
        if start:
            self.src.start(ctid, wait_boot=True)
        return ctid, self.src.config(ctid).get("IP_ADDRESS")

    def dst_destroy(self, ctid: int) -> None:
        self.ns.run([str(REPO / ".venv/bin/vzctl"), "--root", str(self.dst_root), "destroy", str(ctid)], check=False)

    def migrate(self, ctid: int, online: bool = False):
        return migrate(self.src, f"{ALIAS}:{self.dst_root}", ctid, ssh_config=self.ssh.ssh_config,
                       remote_command=REMOTE, online=online)

    def on_dst(self, line: str, stdin=None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command line on the destination over SSH."""
        return subprocess.run(["ssh", "-F", self.ssh.ssh_config, ALIAS, line], stdin=stdin, capture_output=True,
                              timeout=300, check=check)

    def bare_send(self, snap: Path, parent: Path | None, into: str) -> float:
        """btrfs send [-p parent] snap | ssh vzdst btrfs receive into: seconds."""
        t0 = time.perf_counter()
        sender = subprocess.Popen(["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snap)],
                                  stdout=subprocess.PIPE)
        self.on_dst(f"btrfs receive -e {into}", stdin=sender.stdout)
        sender.stdout.close()
        if sender.wait():
            raise RuntimeError(f"btrfs send of {snap} failed")
        return time.perf_counter() - t0

    # --- measurements ---------------------------------------------------------------------
    def offline(self) -> dict:
        ctid, _ = self.new_ve(start=False)
        res = self.migrate(ctid)
        self.dst_destroy(ctid)
        return {"total": res.total_seconds, "bytes": res.bytes_sent, "base_bytes": res.base_bytes}

    def restart(self, online: bool = False) -> dict:
        ctid, addr = self.new_ve(start=True)
        pinger = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns.netns}", sys.executable, "-c", PINGER,
                                   addr, "0.01"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            res = self.migrate(ctid, online=online)
            time.sleep(1.0)
        finally:
            out, _ = pinger.communicate("", timeout=30)
        ping = json.loads(out)
        self.dst_destroy(ctid)
        return {"total": res.total_seconds, "downtime": res.downtime_seconds, "ping_gap": ping["longest_gap"],
                "ping_answered": ping["answered"], "ping_sent": ping["sent"], "bytes": res.bytes_sent,
                "steps": res.steps}

    def bare(self) -> dict:
        """The floor: the same transfers and the same VE's stop and start with the bare tools."""
        ctid, _ = self.new_ve(start=True)
        lay, into = self.src.layout, f"{self.dst_root}/pool/.bare-{ctid}"
        private = lay.private(ctid)
        base = next(lay.template_root(self.args.template).parent.glob(".migrate-base-*"))
        s1, s2 = private.with_name(f".{ctid}.bare-1"), private.with_name(f".{ctid}.bare-2")
        self.on_dst(f"mkdir {into}")
        try:
            self.src.storage.clone(private, s1, readonly=True)
            offline = self.bare_send(s1, base, into)
            lxc = ["-n", str(ctid), "-P", str(lay.lxcpath)]
            t0 = time.perf_counter()
            sh(["lxc-stop", *lxc, "-t", "60"])
            t_stop = time.perf_counter() - t0
            self.src.storage.clone(private, s2, readonly=True)
            t_send = self.bare_send(s2, s1, into)
            t1 = time.perf_counter()
            sh(["lxc-start", *lxc])
            check = self.src.templates.spec(self.args.template).boot_check
            while subprocess.run(["lxc-attach", *lxc, "--", "/bin/sh", "-c", check],
                                 capture_output=True).returncode:
                time.sleep(0.02)
            t_start = time.perf_counter() - t1
            return {"offline_send": offline, "stop": t_stop, "last_send": t_send, "start": t_start,
                    "downtime": time.perf_counter() - t0}
        finally:
            for snap in (s1, s2):
                if snap.exists():
                    self.src.storage.set_readonly(snap, False)
                    self.src.storage.delete(snap)
            self.on_dst(f"btrfs -q subvolume delete {into}/*; rmdir {into}", check=False)
            self.src.destroy(ctid)


def med(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v, unit="s") -> str:
    if v is None:
        return "-"
    return f"{v * 1000:8.0f} ms" if unit == "s" else f"{v / 1024:8.0f} KiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--template", default="debian-12-sysv")
    args = ap.parse_args()
    if os.geteuid() != 0 or not have_sshd():
        print("migration_bench: run as root, with openssh-server installed (for the destination's sshd)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vzbench-mig-", dir="/var/tmp"))
    os.chmod(tmp, 0o711)
    pool = free_test_net()
    (tmp / "vz.conf").write_text(f'POOL_SIZE="8G"\nIP_POOL="{pool.pool}"\nIP6_POOL="{pool.pool6}"\n')
    src = Engine(tmp, lock_wait=30)
    try:
        src.ensure_ready()
        src.templates.ensure(args.template)
        with make_node("migbench", free_test_net(), pool, tmp) as ns, ssh_node(ns, tmp) as ssh:
            bench = Bench(args, ns, ssh, src)
            first = bench.offline()  # (sends the template base once)
            offline = [bench.offline() for _ in range(args.runs)]
            restart = [bench.restart() for _ in range(args.runs)]
            live = [bench.restart(online=True) for _ in range(args.runs)]
            bare = [bench.bare() for _ in range(args.runs)]
    finally:
        src.purge()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nvzmigrate of an idle {args.template} VE between two nodes on this machine "
          f"(median of {args.runs}; SSH over a veth link)\n")
    print(f"template base, sent once to the new node   {fmt(first['base_bytes'], 'b')}")
    print(f"offline   total                             {fmt(med(offline, 'total'))}"
          f"   sent {fmt(med(offline, 'bytes'), 'b')}")
    print(f"          bare: btrfs send -p | ssh receive {fmt(med(bare, 'offline_send'))}")
    print(f"restart   total                             {fmt(med(restart, 'total'))}"
          f"   sent {fmt(med(restart, 'bytes'), 'b')}")
    print(f"          downtime (vzmigrate)              {fmt(med(restart, 'downtime'))}")
    print(f"          longest ping gap (10 ms pings)    {fmt(med(restart, 'ping_gap'))}")
    print(f"          bare: lxc-stop + last increment + lxc-start + boot check {fmt(med(bare, 'downtime'))}"
          f"  (stop {fmt(med(bare, 'stop'))}, send {fmt(med(bare, 'last_send'))}, start {fmt(med(bare, 'start'))})")
    steps = {k: statistics.median(r["steps"][k] for r in restart) for k in restart[0]["steps"]}
    print("          vzmigrate's steps: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()))
    print(f"live      total                             {fmt(med(live, 'total'))}"
          f"   sent {fmt(med(live, 'bytes'), 'b')} (last increment and CRIU images)")
    print(f"          frozen (vzmigrate: dump to resumed) {fmt(med(live, 'downtime'))}")
    print(f"          longest ping gap (10 ms pings)    {fmt(med(live, 'ping_gap'))}")
    steps = {k: statistics.median(r["steps"][k] for r in live) for k in live[0]["steps"]}
    print("          vzmigrate's steps: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()))
    print("\nraw: " + json.dumps({"offline": offline, "restart": restart, "live": live, "bare": bare}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
