"""Suspend a VE to disk with CRIU and resume it, processes and all (``vzctl suspend/resume``).

``lxc-checkpoint -s`` freezes the VE's processes, writes their memory, open files, sockets
(TCP connections included) and namespaces to an image directory and stops the VE;
``lxc-checkpoint -r`` brings them back with the same PIDs. What a checkpoint needs from a
VE (DESIGN.md): no AppArmor keys and no ttys or host console in its LXC config (the engine
writes none), an image directory its mapped root can read, and no process whose session
leader lives outside the VE (``vzctl exec`` without ``setsid``, an open console). systemd
VEs cannot be restored (CRIU fails on the tmpfs mounts systemd makes), so they are refused
before anything is tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import cgroups, criu, lxcfs
from .errors import CommandFailed, StateError, Unsupported, VZError
from .images import (
    MARKER,
    discard,
    image_dir,
    is_resuming,  # noqa: F401 (callers ask checkpoint whether a VE is being resumed)
    is_suspended,
    suspend_info,
)
from .images import RESUMING as _resuming
from .network import parking
from .progress import Progress
from .progress import quiet as _quiet
from .run import run

if TYPE_CHECKING:
    from .engine import Engine
    from .veconf import VEConfig

DUMP_ATTEMPTS = 3
# CRIU log lines that say "Error" but are harmless here (unprivileged VE limits, cgroupd teardown).
_NOISE = ("RLIMIT_NOFILE", "cgroupd: recv req error")
# More lxcfs mounts than a VE gets (ten or so) are the VE's own binds; past this many, refuse.
MAX_EXTERNAL = 64
# The parts of lxcfs a VE may have bound (its /proc files, its CPU view): restore binds them from the host.
_LXCFS_TREES = ("/proc/", "/sys/devices/system/cpu")


def _printable(text: str, width: int = 300) -> str:
    """Text from inside a VE (process names, CRIU's log of its files) made one printable line."""
    return "".join(c if c.isprintable() else "?" for c in text)[:width]


def checkpoint_problem(eng: Engine, conf: VEConfig) -> str | None:
    """Why this VE cannot be checkpointed, in one line, or None when it can (CRIU aside)."""
    spec = eng._spec(conf)
    if not spec.checkpointable:
        return (f"VE {conf.ctid} runs {spec.init} (template {conf.ostemplate}), and CRIU cannot restore "
                "the tmpfs mounts systemd makes (/run/credentials/...); only sysvinit and BusyBox VEs "
                "can be suspended: stop and start it instead")
    for feature in eng.features:  # a feature may know of host objects CRIU cannot carry
        check = getattr(feature, "checkpoint_problem", None)
        reason = check(conf) if check else None
        if reason:
            return f"VE {conf.ctid} cannot be suspended: {reason}"
    return None


def _ve_pids(eng: Engine, ctid: int) -> list[int]:
    rel = eng.layout.cgroup_dir(ctid)
    top = cgroups.path("pids", rel) or cgroups.path("memory", rel)
    pids: set[int] = set()
    if top is None or not top.is_dir():
        return []
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()}
    return sorted(pids)


def _outside_sessions(eng: Engine, ctid: int) -> list[str]:
    """Processes of the VE whose session leader is outside it (NSsid 0 inside the VE)."""
    found = []
    for pid in _ve_pids(eng, ctid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^NSsid:\s*(.*)$", status, re.M)
        if m and m.group(1).split()[-1] == "0":
            name = re.search(r"^Name:\s*(.*)$", status, re.M)
            found.append(f"{pid} ({_printable(name.group(1), 40) if name else '?'})")
    return found


# A VE's links during a dump (taken out, put back, readdressed): vzengine/network/parking.py.
_Detached = parking.Detached


def _detach_links(eng: Engine, ctid: int, st: _Detached) -> None:
    """Take the VE's veth links out of it for the dump, keeping their addresses on lo."""
    pid = eng.lxc.init_pid(ctid)
    if pid is not None:
        parking.detach(pid, eng.layout.tag, ctid, st)


def _reattach_links(eng: Engine, ctid: int, st: _Detached) -> None:
    """Undo ``_detach_links`` on a VE that keeps running (the dump failed)."""
    pid = eng.lxc.init_pid(ctid)
    if pid is not None:
        parking.reattach(pid, st)


def _drop_parked(eng: Engine, ctid: int, st: _Detached) -> None:
    if st.parked:
        # The VE's traffic counts live on its veth: keep them before it goes (network/traffic.py).
        for feature in eng.features:
            if hasattr(feature, "save_traffic"):
                feature.save_traffic(ctid)
    parking.drop_parked(st)


def _drop_stand_ins(eng: Engine, ctid: int, addrs: list[str], routes: bool = True,
                    addresses: bool = True) -> None:
    """Remove the lo stand-ins (the routes before the network feature adds the real ones, the addresses after)."""
    pid = eng.lxc.init_pid(ctid)
    if pid is not None:
        parking.drop_stand_ins(pid, addrs, routes=routes, addresses=addresses)


def _bridged(conf: VEConfig, st: _Detached) -> list[dict]:
    """What the VE had on its bridged interfaces (NETIF), for the marker."""
    return parking.bridged(conf.get("NETIF"), st)


def _readdress(eng: Engine, ctid: int, links: list[dict]) -> None:
    """Give the VE's new bridged interfaces the addresses and routes it had before the suspend."""
    pid = eng.lxc.init_pid(ctid) if links else None
    if pid is not None:
        parking.readdress(pid, links)


def _mountinfo(path: str) -> list[tuple[str, str, str, str]]:
    """(root within its file system, mount point, fs type, device) of every mount in a mountinfo file."""
    out: list[tuple[str, str, str, str]] = []
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) >= 5 and post:
            out.append((_unescape(fields[3]), _unescape(fields[4]), post.split()[0], fields[2]))
    return out


def _unescape(value: str) -> str:
    """Undo mountinfo's octal escapes (a space is \\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value)


def _external_mounts(ctid: int, pid: int) -> list[list[str]]:
    """The VE's mounts of FUSE file systems served from the host (lxcfs): [mount point, root].

    CRIU cannot dump a FUSE mount: it is told they are external, and binds them anew from the
    host's mount of the same file system when it restores. The VE's root makes mounts where it
    likes, under any name, and each name goes into CRIU's config: a name that could be read as
    more than one word there (a line break makes a new option, such as ``action-script``, which
    CRIU runs as root on the host) refuses the suspend instead.
    """
    # The host's lxcfs by its device number: a VE can mount a FUSE file system of its own typed
    # "fuse.lxcfs", which must never be taken for the host's (its paths would be bound from the host).
    devs = {dev for root, _mnt, fstype, dev in _mountinfo("/proc/self/mountinfo") if fstype == "fuse.lxcfs"}
    found = [[mnt, root] for root, mnt, fstype, dev in _mountinfo(f"/proc/{pid}/mountinfo")
             if fstype == "fuse.lxcfs" and dev in devs]
    if len(found) > MAX_EXTERNAL:
        raise StateError(f"VE {ctid} cannot be suspended: it has {len(found)} mounts of lxcfs files (at most "
                         f"{MAX_EXTERNAL} can be carried over); unmount the ones it made itself and try again")
    for mnt, root in found:
        try:
            criu.path_word(mnt, "the mount point")
            if not criu.path_word(root, "the lxcfs path").startswith(_LXCFS_TREES):
                raise criu.UnsafeName(f"lxcfs path {criu.shown(root)} is not one lxcfs serves to VEs")
        except criu.UnsafeName as e:
            raise criu.UnsafeName(
                f"VE {ctid} cannot be suspended: lxcfs is mounted inside it at a path CRIU cannot be told about "
                f"safely ({e.message}); unmount it inside the VE and suspend again") from None
    return found


def _criu_env(eng: Engine, ctid: int, kind: str, options: list[tuple[str, str]]) -> dict | None:
    """The environment for lxc-checkpoint: CRIU reads extra options from $CRIU_CONFIG_FILE."""
    path = eng.layout.rundir / f"{ctid}.criu-{kind}.conf"
    if not options:
        path.unlink(missing_ok=True)
        return None
    criu.write_config(path, options)
    return {**os.environ, "CRIU_CONFIG_FILE": str(path)}


def _ext_key(mountpoint: str) -> str:
    return "vz" + re.sub(r"[^A-Za-z0-9]", "_", mountpoint)


def _restore_options(ctid: int, external: list[list[str]]) -> list[tuple[str, str]]:
    if not external:
        return []
    hosts = [mnt for root, mnt, fstype, _dev in _mountinfo("/proc/self/mountinfo")
             if fstype == "fuse.lxcfs" and root == "/"]
    if not hosts:
        raise StateError("the VE was suspended with lxcfs files in its /proc, and lxcfs is not running now: "
                         "start lxcfs (or start any VE, which starts it) and resume again")
    host = criu.path_word(hosts[0], "the host's lxcfs mount").rstrip("/")
    options = []
    for item in external:
        try:  # checked at suspend; checked again, as the record sits on disk until now
            mnt, root = (criu.path_word(v, "a recorded lxcfs mount") for v in item)
            if not root.startswith(_LXCFS_TREES):
                raise criu.UnsafeName(f"lxcfs path {criu.shown(root)} is not one lxcfs serves to VEs")
        except (criu.UnsafeName, TypeError, ValueError) as e:
            raise StateError(f"VE {ctid} cannot be resumed: its checkpoint records an lxcfs mount CRIU cannot be "
                             f"told about safely ({getattr(e, 'message', e)}); start it afresh instead") from None
        options.append(("external", f"mnt[{_ext_key(mnt)}]:{host}{root}"))
    return options


def _criu_error(log: Path) -> str:
    """The first meaningful error line of a CRIU log, without its timestamp and source position."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if "Error (" in line and not any(n in line for n in _NOISE):
            return _printable(re.sub(r"^\s*(\(\s*[\d.]+\)\s*)?(\d+:\s*)?Error\s*\([^)]*\):\s*", "", line).strip())
    return ""


def _unseizable(log: Path) -> bool:
    """Whether CRIU gave up because it could not freeze (seize) a process."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "Timeout reached. Try to interrupt" in text or "Unseizable" in text


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return _printable(lines[-1][-300:]) if lines else "unknown error"


def _keep_log(eng: Engine, ctid: int, src: Path, kind: str) -> Path:
    dst = eng.layout.logdir / f"{ctid}.criu-{kind}.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(src, dst)
    return dst


def _du(path: Path) -> int:
    total = 0
    for p in path.iterdir():
        with contextlib.suppress(OSError):
            total += p.lstat().st_size
    return total


def suspend(eng: Engine, ctid, progress: Progress = _quiet, locked: bool = False) -> dict:
    """Checkpoint a running VE to disk and stop it; return what was written (seconds, bytes).
    ``locked``: the caller holds the VE's lock already (a live migration, vzengine/migrate.py)."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    problem = checkpoint_problem(eng, conf)
    if problem:
        raise Unsupported(problem)
    criu.require()
    with contextlib.nullcontext() if locked else eng._lock(ctid, "suspend"):
        if is_suspended(eng, ctid):
            raise StateError(f"VE {ctid} is already suspended")
        if not eng.is_running(ctid):
            raise StateError(f"VE {ctid} is not running")
        outside = _outside_sessions(eng, ctid)
        if outside:
            raise StateError(
                f"VE {ctid} cannot be suspended while process {', '.join(outside[:3])} belongs to a session "
                "outside it (a console, or 'vzctl exec' without setsid): end it, or start it with setsid")
        # Before anything changes: the names of the VE's mounts decide whether CRIU may be run at all.
        pid = eng.lxc.init_pid(ctid)
        external = _external_mounts(ctid, pid) if pid else []
        dump_options = [("external", f"mnt[{mnt}]:{_ext_key(mnt)}") for mnt, _ in external]
        d = image_dir(eng, ctid)
        shutil.rmtree(d, ignore_errors=True)  # a partial dump of an earlier, failed try
        d.parent.mkdir(mode=0o711, exist_ok=True)
        os.chmod(d.parent, 0o711)
        # CRIU reopens images from inside the VE's user namespace while it restores, sometimes
        # before the namespace's id map is written (host uid/gid 0 then, without privileges), so
        # the directory is the VE root's, with read access for group root and nobody else: the
        # images hold the VE's memory.
        d.mkdir(mode=0o750)
        os.chown(d, eng.host_root_uid(conf), 0)
        os.chmod(d, 0o750)
        progress(10, f"checkpointing VE {ctid} with CRIU {criu.version_string()}")
        t0 = time.monotonic()
        env = _criu_env(eng, ctid, "dump", dump_options)
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            detached = _Detached()
            try:
                _detach_links(eng, ctid, detached)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                _reattach_links(eng, ctid, detached)
                raise
            proc = run(["lxc-checkpoint", "-P", str(eng.layout.lxcpath), "-n", str(ctid), "-s", "-D", str(d)],
                       check=False, timeout=900, env=env, what=f"checkpoint VE {ctid}")
            log = _keep_log(eng, ctid, d / "dump.log", "dump")
            if proc.returncode == 0:
                break
            why = _criu_error(d / "dump.log") or _last_line(proc.stderr)
            unseizable = _unseizable(d / "dump.log")
            for p in d.iterdir():  # keep the (empty, owned) directory for another try
                p.unlink()
            if eng.is_running(ctid):  # CRIU let the processes go on: give them their network back
                _reattach_links(eng, ctid, detached)
                if unseizable and attempt < DUMP_ATTEMPTS:
                    # A process in uninterruptible sleep (I/O under load) cannot be frozen; that passes.
                    progress(10 + attempt * 10, f"CRIU could not freeze every process ({why}); trying again")
                    time.sleep(attempt)
                    continue
                state = "it keeps running"
            else:
                _drop_parked(eng, ctid, detached)
                eng._after_stop(conf)
                state = "it is stopped now"
            shutil.rmtree(d, ignore_errors=True)
            if unseizable:
                why = f"a process stayed in uninterruptible sleep, so it could not be frozen ({why})"
            raise CommandFailed(f"CRIU could not checkpoint VE {ctid} ({state}): {why} (see {log})")
        seconds = time.monotonic() - t0
        size = _du(d)
        info = {"suspended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ostemplate": conf.ostemplate,
                "criu": criu.version_string(), "bytes": size, "dump_seconds": round(seconds, 3),
                "lo_addresses": detached.stand_ins, "external_mounts": external,
                "links": _bridged(conf, detached)}
        tmp = d / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, d / MARKER)
        _drop_parked(eng, ctid, detached)
        eng._after_stop(conf)
    progress(100, f"VE {ctid} suspended ({size / 1e6:.1f} MB of images in {seconds:.2f} s)")
    return info


def resume(eng: Engine, ctid, progress: Progress = _quiet, locked: bool = False) -> dict:
    """Restore a suspended VE's processes from its images and remove the images (``locked``: as suspend's)."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    with contextlib.nullcontext() if locked else eng._lock(ctid, "resume"):
        if not is_suspended(eng, ctid):
            raise StateError(f"VE {ctid} is not suspended")
        if eng.is_running(ctid):
            raise StateError(f"VE {ctid} is running, so its suspended state is stale: it cannot be resumed")
        criu.require()
        d = image_dir(eng, ctid)
        key = (str(eng.layout.root), ctid)
        progress(10, f"restoring VE {ctid} with CRIU {criu.version_string()}")
        t0 = time.monotonic()
        saved = suspend_info(eng, ctid) or {}
        for attempt in (1, 2):
            cgroups.remove_tree(eng.layout.cgroup_dir(ctid))
            eng.prepare_root(conf, resume=True)  # its root, id-mapped to the range it was dumped with
            eng._write_lxc_config(conf)  # (features prepare what the VE needs: lxcfs, say)
            external = saved.get("external_mounts") or []
            if external:
                lxcfs.ensure(eng.layout)  # its /proc files came from lxcfs, which may not run now (a reboot since)
            env = _criu_env(eng, ctid, "restore", _restore_options(ctid, external))
            rc, out = _restore(eng, ctid, d, env)
            if rc == 0 and eng.is_running(ctid):
                break
            # A failed restore leaves nothing running; one retry covers rare transient failures.
            log = _keep_log(eng, ctid, d / "restore.log", "restore")
            if eng.is_running(ctid):
                with contextlib.suppress(VZError):
                    eng.lxc.stop(ctid, timeout=0, kill=True)
            cgroups.remove_tree(eng.layout.cgroup_dir(ctid))
            if attempt == 2:
                with contextlib.suppress(VZError):  # the next resume mounts it again
                    eng._drop_root_mount(ctid)
                why = _criu_error(d / "restore.log") or _last_line(out)
                raise CommandFailed(f"CRIU could not restore VE {ctid}; it stays suspended: {why} (see {log})")
            progress(30, f"restore failed ({_criu_error(d / 'restore.log')}); trying once more")
        seconds = time.monotonic() - t0
        _keep_log(eng, ctid, d / "restore.log", "restore")
        moved = saved.get("lo_addresses", [])
        _resuming.add(key)
        try:
            _drop_stand_ins(eng, ctid, moved, addresses=False)
            for feature in eng.features:
                feature.after_start(conf)
            _readdress(eng, ctid, saved.get("links", []))
            _drop_stand_ins(eng, ctid, moved, routes=False)
        except BaseException:
            with contextlib.suppress(VZError):
                eng.lxc.stop(ctid, timeout=0, kill=True)
            eng._after_stop(conf)
            raise
        finally:
            _resuming.discard(key)
        discard(eng, ctid)
    progress(100, f"VE {ctid} resumed in {seconds:.2f} s")
    return {"restore_seconds": round(seconds, 3)}


def _restore(eng: Engine, ctid: int, d: Path, env: dict | None) -> tuple[int, str]:
    """Run ``lxc-checkpoint -r``; return (exit status, its output).

    Its output goes to a file, not a pipe: the VE's monitor process that it leaves behind
    inherits the descriptors, and a pipe would never reach end-of-file.
    """
    out_path = eng.layout.logdir / f"{ctid}.lxc-restore.out"
    cmd = ["lxc-checkpoint", "-P", str(eng.layout.lxcpath), "-n", str(ctid), "-r", "-d", "-D", str(d)]
    with open(out_path, "w") as out:
        try:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=900, check=False, env=env).returncode
        except FileNotFoundError:
            raise Unsupported("lxc-checkpoint is not installed (Debian package lxc)") from None
        except subprocess.TimeoutExpired:
            rc = -1
    try:
        return rc, out_path.read_text(errors="replace")
    finally:
        out_path.unlink(missing_ok=True)
