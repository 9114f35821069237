"""lxcfs, the FUSE file system that gives each VE its own /proc/meminfo, cpuinfo, uptime, stat.

lxcfs is host-wide: one daemon mounted at /var/lib/lxcfs serves every container on the host,
and LXC's hook (/usr/share/lxc/config/common.conf.d/00-lxcfs.conf, pulled in by common.conf)
bind-mounts its files into a VE's /proc when the VE starts, if the mount is there then.

Where an init system runs it (systemd's lxcfs.service), the engine just uses it. Where none
does (these machines), the engine starts it before a VE starts and records its pid in the
root's run directory. It marks the process it starts with ``VZENGINE_LXCFS`` in its
environment, so that it never stops an lxcfs that an admin or an init system started. Stopping
an lxcfs that running containers use would leave their /proc files dead ("Transport endpoint is
not connected"), so ``stop`` refuses while any mount namespace other than the host's holds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import CommandFailed
from .layout import Layout
from .run import run, which

log = logging.getLogger(__name__)

MOUNT = Path("/var/lib/lxcfs")  # where LXC's lxcfs hook looks for it
MARK = "VZENGINE_LXCFS"  # environment variable naming the engine root that started it
LOCK = Path("/run/lock/vzengine-lxcfs.lock")  # host-wide: two roots must not start two daemons
FSTYPE = "fuse.lxcfs"


def binary() -> str | None:
    return which("lxcfs")


def _mount_line() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if len(fields) > 4 and fields[4] == str(MOUNT) and post.startswith(FSTYPE + " "):
                return line
    return None


def is_mounted() -> bool:
    return _mount_line() is not None


def is_alive() -> bool:
    """Whether an lxcfs is mounted at /var/lib/lxcfs and answers."""
    if not is_mounted():
        return False
    try:
        os.stat(MOUNT / "proc" / "meminfo")
        return True
    except OSError:
        return False


def pidfile(layout: Layout) -> Path:
    return layout.rundir / "lxcfs.pid"


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(layout: Layout, timeout: float = 5.0) -> str:
    """Make sure lxcfs serves /var/lib/lxcfs; return 'running', 'started' or 'unavailable'."""
    if is_alive():
        return "running"
    exe = binary()
    if exe is None:
        return "unavailable"
    with _host_lock():
        if is_alive():
            return "running"
        if is_mounted():  # its daemon died: the stale mount would make every VE's /proc fail
            log.warning("lxcfs at %s is dead; unmounting it and starting a new one", MOUNT)
            run(["umount", "-l", str(MOUNT)], what="unmount a dead lxcfs")
        MOUNT.mkdir(parents=True, exist_ok=True)
        layout.rundir.mkdir(parents=True, exist_ok=True)
        pf = pidfile(layout)
        pf.unlink(missing_ok=True)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", MARK: str(layout.root)}
        logfile = layout.logdir / "lxcfs.log"
        layout.logdir.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as out:
            # lxcfs stays in the foreground: ``setsid -f`` detaches it from us (its parent
            # becomes init), so it outlives this process and is never our zombie.
            # -l: per-VE load average; --enable-cfs: /proc/cpuinfo and /sys/devices/system/cpu
            # show the CPUs the VE's CFS quota (--cpus, --cpulimit) gives it.
            subprocess.run(["setsid", "-f", exe, "-l", "--enable-cfs", "-p", str(pf), str(MOUNT)],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, check=False,
                           timeout=30, cwd="/")  # never keep a pool directory busy
        deadline = time.monotonic() + timeout
        while not is_alive():
            if time.monotonic() > deadline:
                log.warning("lxcfs did not come up; VEs will see the host's /proc; see %s", logfile)
                _kill_ours_from(pf)
                return "unavailable"
            time.sleep(0.02)
        return "started"


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is a live lxcfs that some vzengine root started."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "lxcfs" and state != "Z" and any(e.startswith(MARK.encode() + b"=") for e in environ)


def _kill_ours_from(pf: Path) -> None:
    """Kill the lxcfs whose pid is in ``pf`` (if it is one the engine started) and its mount."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pf.read_text().strip())
        if _is_ours(pid):
            os.kill(pid, signal.SIGKILL)
    if is_mounted() and not is_alive():
        with contextlib.suppress(CommandFailed):
            run(["umount", "-l", str(MOUNT)], what="unmount a dead lxcfs")


def engine_daemons() -> list[int]:
    """Pids of running lxcfs daemons started by a vzengine root (any root on this host)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _is_ours(int(entry.name)):
            out.append(int(entry.name))
    return out


def users() -> list[int]:
    """One pid per mount namespace (other than ours) with lxcfs files bound in: containers."""
    own = os.readlink("/proc/self/ns/mnt")
    seen = {own}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry.name}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{entry.name}/mountinfo") as f:
                for line in f:
                    # The daemon's own mount (/var/lib/lxcfs) is not a use; a VE's /proc/* binds are.
                    fields = line.split()
                    if f" - {FSTYPE} " in line and len(fields) > 4 and fields[4] != str(MOUNT):
                        found.append(int(entry.name))
                        break
        except OSError:
            continue
    return found


def stop(layout: Layout, timeout: float = 5.0) -> str:
    """Stop the lxcfs a vzengine root started, unless a container still uses it.

    Return 'stopped', 'in use', 'not ours' (an lxcfs the engine did not start serves the
    host: left alone) or 'not running'.
    """
    with _host_lock():
        pids = engine_daemons()
        if not pids:
            pidfile(layout).unlink(missing_ok=True)
            return "not ours" if is_mounted() else "not running"
        busy = users()
        if busy:
            log.warning("lxcfs left running: containers use it (pids %s)", busy[:5])
            return "in use"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_is_ours(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in pids:
            if _is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if is_mounted():  # it was killed before it could unmount itself
            try:
                run(["umount", "-l", str(MOUNT)], what="unmount lxcfs")
            except CommandFailed as e:
                log.warning("%s", e)
        pidfile(layout).unlink(missing_ok=True)
        return "stopped"
