"""A real second node on the test machine: a network namespace of the test's own, a veth link to the host,
its own engine root and its own processes (agent, console daemon) running inside the namespace.

Why not plain ``ip netns exec``: it remounts /sys for the namespace (right: the engine reads
/sys/class/net) but that drops the cgroup mounts below /sys/fs/cgroup (wrong: LXC needs them), and the
mounts the engine makes in its mount namespace (the btrfs pool, VE roots) would stay invisible to the
host, so nothing could clean them up. ``NodeNamespace.argv`` enters the network namespace, unshares the
mount namespace, mounts the namespace's sysfs and moves the host's cgroup tree back under it. The engine
root is a shared bind mount of itself, so what the engine mounts below it propagates to the host: the
host sees (and the cleanup removes) the second node's pool like the first one's.

Everything made here is removed at the end even when the test fails: the node's VEs and pool (purged from
inside the namespace, where LXC's abstract command sockets live), what is still mounted below the root, loop
devices backed by its files, the root, the namespace and the link.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run inside the namespace before the real command: the namespace's own sysfs, the host's cgroup tree kept.
_PROLOGUE = (
    "set -e; cg=$(mktemp -d /run/twonode-cg.XXXXXX); mount --rbind /sys/fs/cgroup \"$cg\"; "
    "mount -t sysfs sysfs /sys; mount --move \"$cg\" /sys/fs/cgroup; rmdir \"$cg\"; exec \"$@\""
)


def _run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


@dataclass
class NodeNamespace:
    """The second node's network namespace, link and engine root (``make_node`` builds and removes it)."""

    name: str  # the node's name in the panel
    netns: str
    host_if: str
    node_if: str
    host_addr: str  # the host's end of the link (the panel's Redis and PostgreSQL listen here)
    node_addr: str
    root: Path  # the node's engine root
    pool: str  # its VEs' address pool (vz.conf IP_POOL)
    procs: list = field(default_factory=list)

    def argv(self, cmd: list[str]) -> list[str]:
        """cmd run as root inside the node: its network namespace, its sysfs, the host's cgroups."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "unchanged",
                "sh", "-c", _PROLOGUE, "twonode", *cmd]

    def env(self, **extra) -> dict:
        """An environment for the node's processes: no database, no panel Redis, its engine root."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTEST_", "VZPANEL_", "REDIS_", "DATABASE_"))}
        env.update(VZ_ROOT=str(self.root), VZPANEL_NO_DATABASE="1", PYTHONUNBUFFERED="1", VZPANEL_NODE=self.name,
                   DJANGO_SETTINGS_MODULE="vzpanel.settings")
        env.update(extra)
        return env

    def run(self, cmd: list[str], check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return _run(self.argv(cmd), check=check, timeout=timeout, cwd=REPO, **kw)

    def python(self, code: str, timeout: float = 300):
        """Run python code in the node (engine root in ``VZ_ROOT``); it prints one JSON value last, returned."""
        proc = self.run([sys.executable, "-c", code], timeout=timeout, env=self.env())
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def net(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        """cmd in the node's network namespace only (ping, ss, pg_isready)."""
        return _run(["nsenter", f"--net=/run/netns/{self.netns}", *cmd], **kw)

    def start(self, cmd: list[str], log: Path, **env) -> subprocess.Popen:
        """Start a long-running process in the node; stop() or the cleanup ends it (by its pid)."""
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(self.argv(cmd), cwd=REPO, env=self.env(**env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_file = out
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, kill: bool = False, timeout: float = 30) -> None:
        """End proc (nsenter, unshare and sh exec into the command, so its pid is the command's): SIGKILL
        when kill (a node that dies), else SIGTERM and a grace period. Its group is left alone: the VEs it
        started live on without it, as on a real node (the cleanup purges them)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            proc.log_file.close()
        if proc in self.procs:
            self.procs.remove(proc)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below path on the host, deepest first."""
    out = _run(["findmnt", "-rn", "-o", "TARGET"], check=False).stdout.split("\n")
    top = str(path)
    found = [m.replace("\\x20", " ") for m in out if m and (m == top or m.startswith(top + "/"))]
    return sorted(found, key=len, reverse=True)


def _loops_below(path: Path) -> list[str]:
    """Loop devices whose backing file lies below path."""
    data = json.loads(_run(["losetup", "-J", "-l"], check=False).stdout or '{"loopdevices": []}')
    return [d["name"] for d in data.get("loopdevices", [])
            if str(d.get("back-file") or "").split(" (")[0].startswith(str(path) + "/")]


def _remove_root(root: Path) -> list[str]:
    """Unmount, detach and remove what is left of an engine root on the host; return what had to be forced."""
    forced = []
    for point in _mounts_below(root):
        if _run(["umount", point], check=False).returncode:
            _run(["umount", "-l", point], check=False)
        forced.append(f"mount {point}")
    for dev in _loops_below(root):
        _run(["losetup", "-d", dev], check=False)
        forced.append(f"loop {dev}")
    shutil.rmtree(root, ignore_errors=True)
    return forced


PURGE = "from vzengine import Engine; import os, json; Engine(os.environ['VZ_ROOT']).purge(); print(json.dumps(1))"


@contextlib.contextmanager
def make_node(name: str, link, pool, log_dir: Path):
    """Yield a NodeNamespace for node name: link is the NetPool of the veth link (host .1, node .2), pool the
    NetPool of the node's VEs. Everything is removed at the end, even on failure."""
    tag = f"{os.getpid() % 100000}"
    ns = NodeNamespace(name=name, netns=f"twonode-{tag}", host_if=f"tn{tag}h", node_if=f"tn{tag}n",
                       host_addr=link.ip(1), node_addr=link.ip(2),
                       root=Path(tempfile.mkdtemp(prefix=f"vztest-{name}-", dir="/var/tmp")), pool=pool.pool)
    bound = False
    try:
        _run(["ip", "netns", "add", ns.netns])
        _run(["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.node_if, "netns", ns.netns])
        _run(["ip", "addr", "add", f"{ns.host_addr}/24", "dev", ns.host_if])
        _run(["ip", "link", "set", ns.host_if, "up"])
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{ns.node_addr}/24", "dev", ns.node_if],
                    ["ip", "link", "set", ns.node_if, "up"], ["ip", "route", "add", "default", "via", ns.host_addr]):
            ns.net(cmd)
        os.chmod(ns.root, 0o711)
        (ns.root / "vz.conf").write_text(f'POOL_SIZE="8G"\nIP_POOL="{pool.pool}"\nIP6_POOL="{pool.pool6}"\n')
        _run(["mount", "--bind", str(ns.root), str(ns.root)])
        bound = True
        _run(["mount", "--make-shared", str(ns.root)])
        ns.python("from vzengine import Engine; import os, json; Engine(os.environ['VZ_ROOT']).ensure_ready(); "
                  "print(json.dumps(1))")
        yield ns
    finally:
        for proc in list(ns.procs):
            ns.stop(proc)
        problems = []
        if bound:
            try:
                ns.python(PURGE, timeout=600)
            except Exception as exc:  # the rest of the cleanup must still run
                problems.append(f"purge: {exc}")
        forced = _remove_root(ns.root)
        _run(["ip", "netns", "del", ns.netns], check=False)  # takes the node's end of the link, and its VEs'
        _run(["ip", "link", "del", ns.host_if], check=False)
        leftover = [f for f in forced if f != f"mount {ns.root}"]  # the bind mount is always ours to undo
        if problems or leftover:
            print(f"twonode cleanup of {name}: {problems} forced {leftover}", file=sys.stderr)

