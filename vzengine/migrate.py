"""Move a VE to another node over SSH (``vzmigrate``): offline for a stopped VE, restart for a running one.

Run on the source node; the destination is a host this node's root logs in to as root with a key,
where vzmigrate is installed (``--agent`` operations, vzengine/migrate_dst.py). Files travel as
``btrfs send`` streams:

- The VE's template is the parent of the first stream, so only what the VE changed travels: a
  read-only snapshot of it (``templates/.migrate-base-<uuid>``, made once and kept), which a
  destination that lacks it (it built its template on its own: the UUIDs differ) receives once,
  full; every later VE of that template sends only its changes.
- Offline: one read-only snapshot of the stopped VE, sent; the destination checks what arrived
  (received UUID, entry and byte counts), then commits it: root, config, addresses and port forwards
  (checked against its own VEs and host), firewall rules (config keys), traffic totals, snapshots
  (``with_snapshots``). Only then is the source copy removed.
- Restart (a running VE): the first snapshot is sent while the VE runs; then the VE stops, a second
  snapshot is sent as an increment against the first, and the VE starts on the destination. The
  downtime is the stop, the last increment, the check and the start.
- Live (``online``, a running VE that CRIU can checkpoint, vzengine/checkpoint.py): as restart, with
  the stop replaced by a CRIU dump (checkpoint.suspend: the VE's links are parked, its processes
  written to ``<root>/dump/<ctid>``) and the start by a resume from those images on the destination,
  which routes the VE's addresses there; its processes keep their PIDs, memory and TCP connections.
  CRIU restores the id map the VE was dumped with, so the VE keeps its host id range (IDMAP), which
  must be free on the destination. The freeze is the dump, the last increment with the images, the
  check and the restore. A VE that cannot be checkpointed is refused with the reason, before anything.

Anything that fails before the end is undone (a Rollback stack, with ``VZ_FAIL_AT`` fail points):
the VE is back where it was, running if it ran, and the destination holds nothing of it (with
``keep_dst``, as OpenVZ's --keep-dst, a VE the destination had already committed stays there, stopped).
A live migration that fails after the dump resumes the VE here from its images.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import checkpoint, criu, errors, idmap, validate, veroot
from .errors import AlreadyExists, CommandFailed, InvalidInput, StateError, Unsupported, VZError
from .migrate_dst import (
    BASE_PREFIX,
    base_lock,
    fail_point,
    is_subvolume,
    node_id,
    send_key,
    subvolume_ids,
    tree_summary,
)
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback

DEFAULT_REMOTE_ROOT = "/var/lib/vz"
DEFAULT_REMOTE_COMMAND = ("vzmigrate",)
CHUNK = 1 << 20
_REMOTE_ERRORS: dict[str, type[VZError]] = {c.__name__: c for c in (errors.InvalidInput, errors.NotFound, errors.AlreadyExists,
                                          errors.StateError, errors.Busy, errors.CommandFailed,
                                          errors.Unsupported)}


@dataclass(frozen=True)
class Destination:
    """``host`` or ``host:root`` as vzmigrate takes it (root: the destination's engine root)."""

    host: str
    root: str = DEFAULT_REMOTE_ROOT

    @classmethod
    def parse(cls, value: str) -> Destination:
        text = str(value).strip()
        host, sep, root = text.partition(":")
        if not host:
            raise InvalidInput(f"invalid destination {value!r}: give a host name or address, optionally host:ROOT")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                validate.hostname(host)
            except InvalidInput:
                raise InvalidInput(f"invalid destination host {host!r}: give a host name or IPv4 address") from None
        if sep:
            if not root.startswith("/") or any(c.isspace() or c in "\0" for c in root) or len(root) > 200:
                raise InvalidInput(f"invalid destination root {root!r}: give an absolute path, e.g. {host}:/var/lib/vz")
            root = os.path.normpath(root)
        return cls(host=host, root=root or DEFAULT_REMOTE_ROOT)

    def __str__(self) -> str:
        return self.host if self.root == DEFAULT_REMOTE_ROOT else f"{self.host}:{self.root}"


@dataclass
class MigrationResult:
    ctid: int
    destination: str
    mode: str  # offline | restart | live
    bytes_sent: int = 0  # the VE's streams (and its snapshots')
    base_bytes: int = 0  # a template the destination lacked, sent once
    passes: list[int] = field(default_factory=list)  # bytes of each pass of the VE's root
    total_seconds: float = 0.0
    downtime_seconds: float | None = None  # restart: stop here to started there; live: dump to resumed
    verified: dict = field(default_factory=dict)  # entries and bytes the destination counted
    steps: dict = field(default_factory=dict)  # seconds of the main steps (first_pass, stop, ...)

    def to_dict(self) -> dict:
        return asdict(self)


class Remote:
    """The destination's migration agent, one SSH command per operation over one shared connection."""

    def __init__(self, dest: Destination, ssh_config: str | None = None,
                 remote_command: list[str] | tuple[str, ...] | None = None, connect_timeout: int = 10):
        self.dest = dest
        self.remote_command = list(remote_command or DEFAULT_REMOTE_COMMAND)
        self._tmp = tempfile.mkdtemp(prefix="vzmig-")
        self._ssh = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
                     "-o", "ControlMaster=auto", "-o", f"ControlPath={self._tmp}/cm", "-o", "ControlPersist=300",
                     "-o", "ServerAliveInterval=15", *(["-F", ssh_config] if ssh_config else []), "-l", "root"]

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._ssh, "-O", "exit", self.dest.host], capture_output=True, timeout=10, check=False)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _command(self, op: str, args: list[str]) -> str:
        env = []
        fail = os.environ.get("VZ_FAIL_AT", "")
        if fail.startswith("migrate:dst-"):  # the destination's fail points, for the tests
            env = ["env", f"VZ_FAIL_AT={fail}"]
        return shlex.join([*env, *self.remote_command, "--root", self.dest.root, "--agent", op, *args])

    def open(self, op: str, *args) -> Channel:
        """Start agent operation ``op``; it reads what is written to the channel, answers on ``finish``."""
        return Channel(self, op, [*self._ssh, "--", self.dest.host, self._command(op, [str(a) for a in args])])

    def call(self, op: str, *args, data: bytes | None = None) -> dict:
        """Run agent operation ``op`` with ``data`` on its input; return its answer or raise its error."""
        channel = self.open(op, *args)
        if data:
            channel.write(data)
        return channel.finish()

    def _ssh_error(self, rc: int, stderr: str) -> VZError:
        host = self.dest.host
        tail = stderr[-300:] or f"exit status {rc}"
        if rc == 255:
            if "Permission denied" in stderr or "Too many authentication failures" in stderr:
                return InvalidInput(f"cannot log in to {host} as root with a key ({tail}): vzmigrate needs key "
                                    f"authentication; add this node's root key to {host}'s /root/.ssh/authorized_keys")
            if "Host key verification failed" in stderr:
                return InvalidInput(f"the host key of {host} is unknown or changed ({tail}): check it and add it to "
                                    "root's known_hosts on this node")
            return InvalidInput(f"cannot reach {host} over SSH: {tail}")
        if rc == 127 or "not found" in stderr:
            return Unsupported(f"{host} has no vzmigrate to receive the VE ({tail}): install vzpanel there")
        return CommandFailed(f"the migration agent on {host} failed: {tail}")


class Channel:
    """One agent operation under way: its input is ours to write, its answer comes on ``finish``."""

    def __init__(self, remote: Remote, op: str, cmd: list[str]):
        self.remote, self.op = remote, op
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._out, stderr=self._err, bufsize=0)
        assert self.proc.stdin is not None
        self._stdin = self.proc.stdin
        self.broken = False
        self._result: dict | VZError | None = None

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            self.broken = True  # the agent stopped reading: its answer says why

    def pump(self, source) -> int:
        """Copy everything from the file ``source`` into the agent; return the bytes copied."""
        sent, fd = 0, source.fileno()
        while not self.broken and (chunk := os.read(fd, CHUNK)):
            self.write(chunk)
            sent += len(chunk)
        return sent

    def finish(self) -> dict:
        """Close the agent's input, wait for its answer and return it, or raise its error (each time asked)."""
        if self._result is None:
            self._result = self._wait()
        if isinstance(self._result, VZError):
            raise self._result
        return self._result

    def _wait(self) -> dict | VZError:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._stdin.close()
        rc = self.proc.wait()
        try:
            self._out.seek(0)
            self._err.seek(0)
            lines = self._out.read().decode(errors="replace").strip().splitlines()
            stderr = " ".join(self._err.read().decode(errors="replace").split())
        finally:
            self._out.close()
            self._err.close()
        answer = None
        if lines:
            with contextlib.suppress(ValueError):
                answer = json.loads(lines[-1])
        if isinstance(answer, dict) and answer.get("ok") and rc == 0:
            return answer
        if isinstance(answer, dict) and "error" in answer:
            cls = _REMOTE_ERRORS.get(str(answer.get("kind")), VZError)
            return cls(f"destination {self.remote.dest.host}: {answer['error']}")
        return self.remote._ssh_error(rc, stderr)

    def abandon(self) -> None:
        """Give up on the operation: the agent sees its input end early and undoes its own part."""
        with contextlib.suppress(VZError):
            self.finish()


# --- the source side ----------------------------------------------------------------------------
def migrate(eng, destination: str, ctid, online: bool = False, keep_dst: bool = False,
            with_snapshots: bool = False, ssh_config: str | None = None,
            remote_command: list[str] | None = None, progress: Progress = _quiet) -> MigrationResult:
    """Move VE ``ctid`` of engine ``eng`` to ``destination`` (host or host:root); see the module's docstring."""
    ctid = validate.ctid(ctid)
    dest = Destination.parse(destination)
    conf = eng.config(ctid)
    if not eng.storage.can_snapshot:
        raise Unsupported("this root keeps VEs in plain directories (STORAGE=dir): migration needs btrfs")
    state = eng.status(ctid).status
    if state not in ("running", "stopped"):
        raise StateError(f"VE {ctid} is {state}: only a running or stopped VE can be migrated")
    live = online and state == "running"  # (a stopped VE moves offline, as with OpenVZ's --online)
    if live:
        _check_live(eng, conf, dest)
    snaps = _snapshots(eng, ctid)
    if snaps and not with_snapshots:
        raise InvalidInput(f"VE {ctid} has {len(snaps)} snapshot(s) ({', '.join(p.name for p in snaps[:5])}): "
                           "add --with-snapshots to move them too, or delete them first")
    t0 = time.monotonic()
    token = secrets.token_hex(6)
    with Remote(dest, ssh_config, remote_command) as remote:
        progress(5, f"asking {dest.host} to receive VE {ctid}")
        host_range = veroot.host_range(conf) if live else None
        info = remote.call("probe", ctid, node_id(eng.layout.root),
                           *([host_range, _root_path(eng)] if host_range is not None else []))
        fail_point("migrate:probe")
        if info["exists"]:
            raise AlreadyExists(f"VE {ctid} already exists on {dest}")
        if info.get("range") == "taken":
            raise Unsupported(f"VE {ctid} runs as host ids {host_range}.., which another VE holds on {dest.host}; "
                              "CRIU restores the id map a VE was dumped with, so it cannot move live there: "
                              "migrate it without --online (restart migration)")
        if tuple(info["idmap"]) != tuple(eng.layout.idmap):
            raise Unsupported(f"{dest.host} stores VE files shifted to ids {info['idmap'][0]}+, this node to "
                              f"{eng.layout.idmap[0]}+: set the same IDMAP_BASE and IDMAP_SIZE in both vz.conf")
        undone = {"ok": True}  # whether the destination said it undid its part, when asked last
        with _locked(eng, ctid), _left_suspended(eng, ctid, dest, undone):
            for stale in eng.layout.pool.glob(f"private/.{ctid}.migrate-*"):  # (a migration killed here)
                _drop(eng, stale)
            conf = eng.config(ctid)  # (as it is now that nothing else may change it)
            running = eng.is_running(ctid)
            if live and not running:
                raise StateError(f"VE {ctid} stopped while the migration began: migrate it again")
            result = MigrationResult(ctid=ctid, destination=str(dest),
                                     mode="live" if live else "restart" if running else "offline")
            channel: list[Channel] = []  # the landing under way, which an undo abandons first

            def undo_destination() -> None:
                for ch in channel:
                    ch.abandon()
                undone["ok"] = False
                remote.call("abort", ctid, token, *(["keep"] if keep_dst else []))
                undone["ok"] = True

            def resume_if_undone() -> None:
                # A destination that may hold the VE resumed (it did not answer the abort) must never
                # see it run here too: one more try, then the VE stays suspended (_left_suspended).
                if not undone["ok"]:
                    with contextlib.suppress(VZError):
                        undo_destination()
                if undone["ok"]:
                    _resume_here(eng, ctid)

            with Rollback() as rb:
                rb.add("undo the destination's part", undo_destination)
                parent = _base(eng, conf, remote, info, result, progress)
                plan_snaps = []
                for snap in snaps:
                    progress(20, f"sending snapshot {snap.name}")
                    plan_snaps.append(_send_snapshot(snap, parent, remote, ctid, token, result))
                    parent = snap
                progress(30, "sending the VE's files" + (" while it runs" if running else ""))
                first = final = _ro_snapshot(eng, ctid, token, 1, rb)
                fail_point("migrate:snapshot")
                if running:
                    with _timed(result, "first_pass"):
                        result.passes.append(_send(remote.open("receive", ctid, token), first, parent))
                    fail_point("migrate:send")
                    parent = first
                    # The agent that receives the last increment loads while the VE still runs.
                    channel.append(remote.open("land", ctid, token, "resume" if live else "start"))
                    t_stop = time.monotonic()
                    if live:
                        progress(60, f"checkpointing VE {ctid} for the last increment")
                        with _timed(result, "dump"):
                            try:
                                checkpoint.suspend(eng, ctid, locked=True)
                            except BaseException:
                                if not eng.is_running(ctid):  # (CRIU let it go down: it runs here again)
                                    _start_locked(eng, conf)
                                raise
                        rb.add(f"resume VE {ctid} here", resume_if_undone)
                        idmap.release(eng.layout.root, ctid)  # (an allocator both roots share: theirs now)
                        rb.add("undo the destination's part", undo_destination)  # (before it resumes here)
                        fail_point("migrate:dumped")
                    else:
                        progress(60, f"stopping VE {ctid} for the last increment")
                        with _timed(result, "stop"):
                            _stop_locked(eng, conf)
                        rb.add(f"start VE {ctid} again here", lambda: _start_locked(eng, conf))
                        rb.add("undo the destination's part", undo_destination)  # (before the VE restarts here)
                        fail_point("migrate:stopped")
                    final = _ro_snapshot(eng, ctid, token, 2, rb)
                else:
                    channel.append(remote.open("land", ctid, token))
                    rb.add("undo the destination's part", undo_destination)
                summary = _Summary(final)
                progress(75, f"sending the last increment, checking and {'resuming' if live else 'starting'} "
                         f"VE {ctid} on {dest.host}" if running
                         else f"sending the VE's files to {dest.host} and checking them there")
                step = "last_pass_check_resume" if live else "last_pass_check_start" if running else "send_and_check"
                with _timed(result, step):
                    result.passes.append(_send(channel[0], final, parent))
                    plan = {"config": dict(conf.values), "final": final.name,
                            "expect": {"uuid": subvolume_ids(final)["uuid"], **summary.result()},
                            "traffic": _traffic(eng, ctid), "snapshots": plan_snaps}
                    if live:
                        plan["config"] = dict(eng.config(ctid).values)  # (as the dump left it)
                        images = _image_listing(eng, ctid)
                        plan["images"] = images
                        channel[0].write(json.dumps(plan).encode() + b"\n")
                        result.bytes_sent += _send_images(channel[0], eng, ctid, images)
                    else:
                        channel[0].write(json.dumps(plan).encode())
                    answer = channel.pop().finish()
                result.bytes_sent += sum(result.passes)
                result.verified = answer.get("verified", {})
                if isinstance(answer.get("steps"), dict):  # (the destination's share of the last step)
                    result.steps.update({f"dst_{k}": v for k, v in answer["steps"].items()})
                if running:
                    result.downtime_seconds = round(time.monotonic() - t_stop, 3)
                fail_point("migrate:landed")
                rb.commit()
            for path in (first, final):
                _drop(eng, path)
        progress(95, f"removing VE {ctid} from this node")
        try:
            eng.destroy(ctid)
        except VZError as e:
            raise StateError(f"VE {ctid} is now on {dest}, but removing it here failed: {e.message}; "
                             f"remove it with 'vzctl destroy {ctid}'") from e
        with contextlib.suppress(VZError):  # the destination's note that the VE came by migration
            remote.call("finish", ctid, token)
    result.total_seconds = round(time.monotonic() - t0, 3)
    progress(100, f"VE {ctid} migrated to {dest}")
    return result


# --- steps ------------------------------------------------------------------------------------
def _check_live(eng, conf, dest: Destination) -> None:
    """Refuse, with the reason, a running VE that cannot move live, before anything is done."""
    hint = (f"migrate it without --online (restart migration: it stops here, its last changes travel, "
            f"it starts on {dest.host})")
    problem = checkpoint.checkpoint_problem(eng, conf)
    if problem:
        raise Unsupported(f"VE {conf.ctid} cannot move live: {problem}; {hint}")
    try:
        criu.require()
    except VZError as e:
        raise Unsupported(f"VE {conf.ctid} cannot move live: {e.message}; {hint}") from None
    outside = checkpoint._outside_sessions(eng, conf.ctid)
    if outside:
        raise StateError(f"VE {conf.ctid} cannot move live while process {', '.join(outside[:3])} belongs to a "
                         f"session outside it (a console, or 'vzctl exec' without setsid): end it, or {hint}")


@contextlib.contextmanager
def _left_suspended(eng, ctid: int, dest: Destination, undone: dict):
    """Say so when a failed live migration could not resume the VE here because the destination did not
    confirm that it removed its copy (which may run there)."""
    try:
        yield
    except VZError as e:
        if undone["ok"] or not checkpoint.is_suspended(eng, ctid):
            raise
        raise StateError(f"{e.message}; and {dest.host} did not confirm that it removed its copy of VE {ctid}, "
                         f"so the VE stays suspended here rather than risk running twice: check {dest}, then "
                         f"'vzctl resume {ctid}' here if it does not run there") from e


def _root_path(eng) -> str:
    """This engine root as the id allocator names it: a destination sharing the allocator (two roots on one
    host) sees that the range it is asked about is held by the migrating VE itself."""
    return os.path.realpath(eng.layout.root)


def _resume_here(eng, ctid: int) -> None:
    """Undo a live migration's dump: the VE's processes come back on this node, in their own id range."""
    checkpoint.resume(eng, ctid, locked=True)


def _image_listing(eng, ctid: int) -> list[dict]:
    """The CRIU images of the VE's dump, as the destination reads them after the plan (the marker last:
    the destination has a checkpoint only once everything before it arrived)."""
    d = checkpoint.image_dir(eng, ctid)
    out = []
    for p in sorted(d.iterdir(), key=lambda p: (p.name == checkpoint.MARKER, p.name)):
        st = p.lstat()
        if p.is_file() and not p.is_symlink():
            out.append({"name": p.name, "size": st.st_size, "mode": st.st_mode & 0o7777, "uid": st.st_uid,
                        "gid": st.st_gid})
    if not any(i["name"] == checkpoint.MARKER for i in out):
        raise CommandFailed(f"VE {ctid}'s checkpoint has no {checkpoint.MARKER}: the dump did not finish")
    return out


def _send_images(channel: Channel, eng, ctid: int, images: list[dict]) -> int:
    """Write the listed images' bytes, one after the other, into the landing; return the bytes sent."""
    d, sent = checkpoint.image_dir(eng, ctid), 0
    for item in images:
        with open(d / item["name"], "rb") as f:
            n = channel.pump(f)
        if n != item["size"] and not channel.broken:
            raise CommandFailed(f"CRIU image {item['name']} changed while it was sent")
        sent += n
    fail_point("migrate:images")
    return sent


def _snapshots(eng, ctid: int) -> list[Path]:
    """The VE's own snapshots, oldest first (hidden names are temporary ones of backups and clones)."""
    snapdir = eng.layout.snapshot_dir(ctid)
    if not snapdir.is_dir():
        return []
    found = [p for p in snapdir.iterdir() if not p.name.startswith(".") and p.is_dir()]
    return sorted(found, key=lambda p: (_meta(p).get("created", ""), p.stat().st_mtime))


def _meta(snap: Path) -> dict:
    try:
        meta = json.loads(snap.with_name(f".{snap.name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _base(eng, conf, remote: Remote, info: dict, result: MigrationResult, progress: Progress) -> Path | None:
    """The parent of the first stream: this node's base of the VE's template (a read-only snapshot of it,
    kept beside it and named by its UUID), sent to the destination first if it does not have it."""
    tpl = eng.layout.template_root(conf.ostemplate) if conf.ostemplate else None
    if tpl is None or not is_subvolume(tpl):
        return None  # (its template is gone: the whole tree travels)
    tpl_uuid = subvolume_ids(tpl)["uuid"]
    if not tpl_uuid:
        return None
    base = tpl.with_name(f"{BASE_PREFIX}{tpl_uuid}")
    with base_lock(eng.layout):
        if not is_subvolume(base):
            eng.storage.clone(tpl, base, readonly=True)
    key = send_key(subvolume_ids(base))
    if key and key not in info["bases"]:
        progress(10, f"sending template {conf.ostemplate}, which {remote.dest.host} lacks (once)")
        result.base_bytes += _send(remote.open("receive-base", key, base.name), base, None)
    return base


def _send_snapshot(snap: Path, parent: Path | None, remote: Remote, ctid: int, token: str,
                   result: MigrationResult) -> dict:
    result.bytes_sent += _send(remote.open("receive", ctid, token), snap, parent)
    return {"name": snap.name, "received": snap.name, "uuid": subvolume_ids(snap)["uuid"], "meta": _meta(snap)}


def _ro_snapshot(eng, ctid: int, token: str, n: int, rb: Rollback) -> Path:
    path = eng.layout.private(ctid).with_name(f".{ctid}.migrate-{token}-{n}")
    eng.storage.clone(eng.layout.private(ctid), path, readonly=True)
    rb.add(f"remove snapshot {path.name}", lambda: _drop(eng, path))
    return path


def _drop(eng, path: Path) -> None:
    if path.exists():
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)


def _send(channel: Channel, snap: Path, parent: Path | None) -> int:
    """Stream ``btrfs send [-p parent] snap`` into the agent operation on ``channel``; return the bytes sent.
    A receive op is finished here; a landing (whose plan follows the stream) is left to the caller."""
    cmd = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snap)]
    with tempfile.TemporaryFile() as err:
        sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        stream = sender.stdout
        assert stream is not None
        try:
            sent = channel.pump(stream)
        finally:
            if sender.poll() is None and channel.broken:
                sender.kill()
            stream.close()
            sender.wait()
        if channel.broken:  # the agent stopped reading: raise its error (or it had what it needed)
            channel.finish()
            return sent
        if sender.returncode != 0:
            err.seek(0)
            detail = " ".join(err.read().decode(errors="replace").split())[-300:]
            channel.abandon()
            raise CommandFailed(f"btrfs send of {snap.name} failed: {detail or sender.returncode}")
    if channel.op != "land":
        channel.finish()
    return sent


@contextlib.contextmanager
def _timed(result: MigrationResult, step: str):
    t0 = time.monotonic()
    try:
        yield
    finally:
        result.steps[step] = round(time.monotonic() - t0, 3)


class _Summary:
    """Count a read-only tree's entries and bytes in a thread, while it is being sent."""

    def __init__(self, path: Path):
        self._out: dict = {}
        self._thread = threading.Thread(target=lambda: self._out.update(tree_summary(path)), daemon=True)
        self._thread.start()

    def result(self) -> dict:
        self._thread.join()
        if not self._out:
            raise CommandFailed("could not count the files of the VE's snapshot")
        return dict(self._out)


def _traffic(eng, ctid: int) -> list[int] | None:
    for feature in eng.features:
        if feature.name == "network" and hasattr(feature, "totals"):
            return list(feature.totals(ctid))
    return None


# --- the engine's lifecycle under a lock held for the whole migration --------------------------
# Engine.stop/start/destroy take the VE's lock themselves; a migration must hold it from its first
# snapshot to its end (so nobody starts the VE meanwhile), hence these three calls into the engine.
def _locked(eng, ctid: int):
    return eng._lock(ctid, "migrate")


def _stop_locked(eng, conf) -> None:
    eng._stop(conf, None, False, _quiet)


def _start_locked(eng, conf) -> None:
    eng._start(conf, _quiet)
