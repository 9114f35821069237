"""The destination's half of a migration: what ``vzmigrate --agent OP`` does on the node a VE moves to.

The source node (vzengine/migrate.py) drives the migration and runs one agent operation per SSH
command; each prints one JSON object as its last line of output. Nothing here trusts the source
beyond what root on it could do anyway (it logs in as root), but every path is still derived here
from the VE id and a token of hex digits, never taken from the other side.

Where things go on the destination while a migration is under way:

    <pool>/.migrate-<ctid>-<token>/    the received btrfs streams (read-only subvolumes), until commit
    <pool>/templates/.migrate-base-<uuid>   a template sent once by a source (its read-only snapshot of the
                                        template, named by that snapshot's UUID): kept, so the next VE of
                                        that template sends only its changes
    <root>/migrate/<ctid>.json         "VE ctid was committed here by migration <token>": what lets an
                                        abort remove that VE and nothing that was here before
    <root>/dump/.migrate-<ctid>-<token>/   a live migration's CRIU images as they arrive; renamed to
                                        <root>/dump/<ctid> (with its vz-suspend.json) once the VE is committed

A VE is committed (its root, config, traffic totals and snapshots put in place) only after the
received tree was checked against what the source sent: the subvolume's received UUID is the source
snapshot's, and its count of entries and bytes match.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import validate
from .errors import (
    AlreadyExists,
    Busy,
    CommandFailed,
    InvalidInput,
    NotFound,
    StateError,
    Unsupported,
    VZError,
)
from .lock import flock_within, ve_lock
from .rollback import Rollback
from .run import run
from .veconf import VEConfig

# Config keys that belong to the node, not the VE: the destination picks its own.
NODE_KEYS = ("IDMAP",)
STALE_SECONDS = 6 * 3600  # a migration's staging directory this old belongs to a migration that died
BASE_PREFIX = ".migrate-base-"  # + the UUID of the source's read-only snapshot of a template
_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_TOKEN = re.compile(r"^[0-9a-f]{8,32}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def fail_point(name: str) -> None:
    """Raise where $VZ_FAIL_AT names this point (as the engine's own fail points do)."""
    if os.environ.get("VZ_FAIL_AT") == name:
        raise CommandFailed(f"injected failure at {name}")


# --- btrfs facts both sides use ---------------------------------------------------------------
def subvolume_ids(path: Path) -> dict:
    """{"uuid", "received_uuid"} of a btrfs subvolume (received_uuid None unless it was received)."""
    out = run(["btrfs", "subvolume", "show", str(path)], what=f"read subvolume {path.name}").stdout
    ids = {"uuid": None, "received_uuid": None}
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "UUID" and _UUID.match(value):
            ids["uuid"] = value
        elif key == "Received UUID" and _UUID.match(value):
            ids["received_uuid"] = value
    return ids


def is_subvolume(path: Path) -> bool:
    """Whether path is the top of a btrfs subvolume (its inode number is always 256)."""
    try:
        return os.lstat(path).st_ino == 256
    except FileNotFoundError:
        return False


def send_key(ids: dict) -> str | None:
    """The UUID a send stream names for this subvolume as parent, and that receive looks up."""
    return ids.get("received_uuid") or ids.get("uuid")


def tree_summary(top: Path) -> dict:
    """Count the entries of a tree and the bytes of its regular files, following no link and
    entering no other file system: what both sides compare after a transfer."""
    entries = size = 0
    dev = os.lstat(top).st_dev
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                entries += 1
                st = e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    if st.st_dev == dev:  # a nested subvolume travels as an empty directory
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    size += st.st_size
    return {"entries": entries, "bytes": size}


# --- the agent --------------------------------------------------------------------------------
class Agent:
    """The operations the source may ask of this node, on one engine root."""

    def __init__(self, root: str):
        from .engine import Engine  # (the engine is heavy; --agent probe on a bad root fails before it)

        self.root = Path(root)
        if not self.root.is_dir() or (not (self.root / "vz.conf").exists() and not (self.root / "conf").is_dir()):
            raise NotFound(f"there is no engine root at {root} (give DESTINATION as host:ROOT)")
        self.eng = Engine(root, lock_wait=30)
        self.layout = self.eng.layout

    # paths, all derived here
    def staging(self, ctid: int, token: str) -> Path:
        return self.layout.pool / f".migrate-{ctid}-{_token(token)}"

    def record(self, ctid: int) -> Path:
        return self.layout.root / "migrate" / f"{ctid}.json"

    def bases(self) -> Path:
        return self.layout.pool / "templates"

    # --- operations -------------------------------------------------------------------------
    def probe(self, ctid: int, source_id: str, host_range: int | None = None, source_root: str = "") -> dict:
        """Say who this node is and what it has; refuse when it is the source node itself. ``host_range``
        (a live migration): whether the VE's host id range is free here ("free"), held by the migrating VE
        itself on an id allocator both roots share ("source", handed over after the dump), or "taken"."""
        if node_id(self.root) == source_id:
            raise InvalidInput(f"{self.root} there is this node's own engine root: migrate to another node")
        self.eng.ensure_ready()
        self._drop_stale(ctid)
        if not self.eng.storage.can_snapshot:
            raise Unsupported(f"the destination root {self.root} keeps VEs in plain directories (STORAGE=dir): "
                              "migration needs btrfs on both nodes")
        keys = set()
        for p in self.bases().iterdir():
            if p.is_dir() and is_subvolume(p):
                ids = subvolume_ids(p)
                keys |= {k for k in (ids["uuid"], ids["received_uuid"]) if k}
        return {"exists": self.eng.exists(ctid) or self.layout.private(ctid).exists(),
                "range": None if host_range is None else _range_state(ctid, host_range, source_root),
                "idmap": list(self.layout.idmap), "storage": self.eng.storage.kind,
                "bases": sorted(keys), "machine": _machine_id()}

    def receive(self, ctid: int, token: str) -> dict:
        """Receive one btrfs stream from standard input into the migration's staging directory."""
        stage = self.staging(ctid, token)
        stage.mkdir(mode=0o700, exist_ok=True)
        before = set(os.listdir(stage))
        _receive(stage)
        fail_point("migrate:dst-receive")
        return {"received": sorted(set(os.listdir(stage)) - before)}

    def receive_base(self, key: str, name: str) -> dict:
        """Receive a template from standard input as a base for this and later migrations.

        Received straight into templates/ under the source's name for it (a renamed read-only
        subvolume would have to rewrite its "..", which btrfs refuses): the received UUID stays, and
        with it the next stream that names this base as its parent finds it here.
        """
        key, name = _uuid(key), _base_name(name)
        final = self.bases() / name
        with base_lock(self.layout):
            if final.exists() and subvolume_ids(final)["received_uuid"] == key:
                return {"base": name}
            if final.exists():
                raise AlreadyExists(f"a different template base {name} is already on the destination")
            try:
                _receive(self.bases())
                if not final.is_dir() or subvolume_ids(final)["received_uuid"] != key:
                    raise CommandFailed(f"the template received is not the one sent ({key})")
            except BaseException:
                with contextlib.suppress(VZError):
                    self._drop(final)
                raise
        return {"base": name}

    def land(self, ctid: int, token: str, start: bool, resume: bool = False) -> dict:
        """Receive the last stream, then read the plan that follows it, commit, and start if asked: the
        end of a migration in one process (the source opens it before it stops the VE, so loading
        this program is not part of the downtime).

        ``resume`` (live migration): the plan is one line, followed by the CRIU images it lists (name,
        size, mode, raw bytes one after the other); the VE keeps its host id range and is resumed
        from them instead of booted."""
        stage = self.staging(ctid, token)
        stage.mkdir(mode=0o700, exist_ok=True)
        steps, t0 = {}, time.monotonic()
        _receive(stage)  # (-e: it stops at the stream's end; the plan comes next on the same input)
        fail_point("migrate:dst-receive")
        steps["receive"] = time.monotonic() - t0
        if resume:
            plan = json.loads(sys.stdin.buffer.readline(1 << 24) or b"null")
        else:
            plan = json.loads(sys.stdin.buffer.read() or b"null")
        if not isinstance(plan, dict):
            raise InvalidInput("the source sent no migration plan after the VE's files")
        if resume:
            self._receive_images(ctid, token, plan.get("images"))
            fail_point("migrate:dst-images")
        steps["plan_images"] = time.monotonic() - t0 - sum(steps.values())
        out = self.commit(ctid, token, plan, keep_range=resume)
        steps["check_commit"] = time.monotonic() - t0 - sum(steps.values())
        if resume:
            out.update(self.resume(ctid, token))
        elif start:
            out.update(self.start(ctid, token))
        steps["resume" if resume else "start"] = time.monotonic() - t0 - sum(steps.values())
        return {**out, "steps": {k: round(v, 3) for k, v in steps.items()}}

    def images(self, ctid: int, token: str) -> Path:
        return self.layout.root / "dump" / f".migrate-{ctid}-{_token(token)}"

    def _receive_images(self, ctid: int, token: str, listing) -> None:
        """Read the CRIU images the plan lists from standard input into the migration's images directory."""
        if not isinstance(listing, list) or not listing:
            raise InvalidInput("the source sent no CRIU images for a live migration")
        d = self.images(ctid, token)
        d.parent.mkdir(mode=0o711, exist_ok=True)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(mode=0o700)
        src = sys.stdin.buffer
        for item in listing:
            name, left, mode = _name(item["name"]), int(item["size"]), int(item["mode"]) & 0o644
            with open(d / name, "xb") as f:
                while left > 0:
                    chunk = src.read(min(left, 1 << 20))
                    if not chunk:
                        raise CommandFailed(f"the CRIU image {name} arrived cut short")
                    f.write(chunk)
                    left -= len(chunk)
            os.chmod(d / name, mode)
            os.chown(d / name, int(item.get("uid", 0)), int(item.get("gid", 0)))  # (as CRIU left them there)

    def resume(self, ctid: int, token: str) -> dict:
        """Put the received images in place as the VE's checkpoint and resume it from them."""
        from . import checkpoint

        self._ours(ctid, token)
        d, conf = self.images(ctid, token), self.eng.config(ctid)
        if not (d / checkpoint.MARKER).is_file():
            raise NotFound("the VE's CRIU images did not arrive on the destination")
        final = checkpoint.image_dir(self.eng, ctid)
        shutil.rmtree(final, ignore_errors=True)
        owner = self.eng.host_root_uid(conf)  # as suspend leaves it: CRIU reads it as the VE's root
        os.chown(d, owner, 0)
        os.chmod(d, 0o750)
        os.rename(d, final)
        fail_point("migrate:dst-resume")
        info = checkpoint.resume(self.eng, ctid)  # (starts lxcfs here if the VE's /proc files came from it)
        return {"status": self.eng.status(ctid).status, **info}

    def commit(self, ctid: int, token: str, plan: dict, keep_range: bool = False) -> dict:
        """Check the received tree and make it VE ctid of this node (config, totals, snapshots).
        ``keep_range``: the VE keeps the host id range its config names (CRIU restores the id map it was
        dumped with), which must be free here."""
        stage = self.staging(ctid, token)
        final = stage / _name(plan["final"])
        if not final.is_dir():
            raise NotFound(f"the migration's last transfer ({final.name}) is missing on the destination")
        ids = subvolume_ids(final)
        if ids["received_uuid"] != plan["expect"]["uuid"]:
            raise CommandFailed("the received VE root is not the one the source sent (received UUID differs)")
        got = tree_summary(final)
        want = {k: int(plan["expect"][k]) for k in ("entries", "bytes")}
        if got != want:
            raise CommandFailed(f"the received VE root differs from the source's: {got['entries']} entries and "
                                f"{got['bytes']} bytes, the source has {want['entries']} and {want['bytes']}")
        values = {_key(k): str(v) for k, v in plan["config"].items() if keep_range or k not in NODE_KEYS}
        self.eng.ensure_ready()
        with ve_lock(self.layout.lockdir, ctid, "migrate-in", wait=30), Rollback() as rb:
            if self.eng.exists(ctid) or self.layout.private(ctid).exists():
                raise AlreadyExists(f"VE {ctid} already exists on the destination")
            conf = VEConfig(ctid=ctid, path=self.layout.conf(ctid), values=values)
            self._check_network(conf)
            if keep_range:
                self._claim_range(conf, rb)
            self.eng.storage.clone(final, self.layout.private(ctid))
            rb.add("remove the VE's root", lambda: self.eng.storage.delete(self.layout.private(ctid)))
            for snap in plan.get("snapshots", []):
                self._place_snapshot(ctid, stage, snap, rb)
            self._write_traffic(ctid, plan.get("traffic"), rb)
            self.record(ctid).parent.mkdir(mode=0o700, exist_ok=True)
            self.record(ctid).write_text(json.dumps({"token": token}) + "\n")
            rb.add("forget the migration", lambda: self.record(ctid).unlink(missing_ok=True))
            conf.save()
            rb.add("remove the VE's config", lambda: self.layout.conf(ctid).unlink(missing_ok=True))
            VEConfig.load(self.layout.conf(ctid), ctid)  # what was written reads back
            fail_point("migrate:dst-commit")
            rb.commit()
        self._drop_staging(ctid, token)
        return {"verified": got}

    def start(self, ctid: int, token: str) -> dict:
        self._ours(ctid, token)
        self.eng.start(ctid, wait_boot=True)
        fail_point("migrate:dst-start")
        return {"status": self.eng.status(ctid).status}

    def finish(self, ctid: int, token: str) -> dict:
        """The migration is done: the VE is this node's like any other."""
        self._ours(ctid, token)
        self.record(ctid).unlink()
        return {}

    def abort(self, ctid: int, token: str, keep: bool) -> dict:
        """Undo this migration here: remove what it received and the VE it committed (``keep``: keep
        that VE, stopped, as OpenVZ's --keep-dst does). A VE this migration did not make is never touched."""
        removed = kept = False
        if self._is_ours(ctid, token):
            if self.eng.is_running(ctid):
                self.eng.stop(ctid, fast=True)
            if keep:
                kept = True
                self._unsuspend_kept(ctid)
            else:
                self.eng.destroy(ctid)
                removed = True
            self.record(ctid).unlink(missing_ok=True)
        self._drop_staging(ctid, token)
        shutil.rmtree(self.images(ctid, token), ignore_errors=True)
        return {"removed": removed, "kept": kept}

    # --- helpers ----------------------------------------------------------------------------
    def _unsuspend_kept(self, ctid: int) -> None:
        """A kept copy of a live migration boots afresh if ever started: its CRIU images go (the VE resumed
        on the source), and so does the host id range it kept, which is the source VE's; it takes its own."""
        from . import idmap, images

        images.discard(self.eng, ctid)
        conf = self.eng.config(ctid)
        if "IDMAP" in conf.values:
            idmap.release(self.layout.root, ctid)
            del conf.values["IDMAP"]
            conf.save()

    def _is_ours(self, ctid: int, token: str) -> bool:
        try:
            return json.loads(self.record(ctid).read_text()).get("token") == token
        except (OSError, ValueError):
            return False

    def _ours(self, ctid: int, token: str) -> None:
        if not self._is_ours(ctid, token):
            raise StateError(f"VE {ctid} on the destination was not committed by this migration")

    def _claim_range(self, conf: VEConfig, rb: Rollback) -> None:
        from . import idmap, veroot

        host = veroot.host_range(conf)
        if host is None:  # (it ran on its plain root, IDMAP_BASE, which both nodes share)
            return
        if not idmap.claim_exact(self.layout.root, conf.ctid, host):
            raise StateError(f"host ids {host}.. that VE {conf.ctid} runs as are held by another VE here, and a live "
                             "migration must keep them: migrate it without --online (restart migration)")
        rb.add("free the VE's id range", lambda: idmap.release(self.layout.root, conf.ctid))

    def _check_network(self, conf: VEConfig) -> None:
        """Refuse addresses or forwarded ports that another VE or the host of this node has."""
        addrs = conf.get_list("IP_ADDRESS")
        forwards = conf.get_list("PORTFWD")
        for feature in self.eng.features:
            if feature.name == "network" and (addrs or forwards):
                feature.check(VEConfig(ctid=conf.ctid, path=conf.path), {"ipadd": addrs, "portfwd": forwards},
                              creating=True)

    def _place_snapshot(self, ctid: int, stage: Path, snap: dict, rb: Rollback) -> None:
        name = validate.snapshot_name(snap["name"])
        got = stage / _name(snap["received"])
        if not got.is_dir() or subvolume_ids(got)["received_uuid"] != snap["uuid"]:
            raise CommandFailed(f"snapshot {name} did not arrive whole on the destination")
        snapdir = self.layout.snapshot_dir(ctid)
        snapdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest = snapdir / name
        self.eng.storage.clone(got, dest, readonly=True)
        rb.add(f"remove snapshot {name}", lambda: self._drop(dest))
        meta = snapdir / f".{name}.json"
        meta.write_text(json.dumps(snap.get("meta") or {}, indent=1))
        rb.add(f"remove snapshot {name}'s metadata", lambda: meta.unlink(missing_ok=True))

    def _write_traffic(self, ctid: int, totals, rb: Rollback) -> None:
        if not totals or len(totals) != 4:
            return
        for feature in self.eng.features:
            if feature.name == "network":
                d = Path(getattr(feature, "traffic_dir")) / str(ctid)  # noqa: B009 (the network feature's)
                d.mkdir(parents=True, exist_ok=True)
                (d / "total").write_text(" ".join(str(int(n)) for n in totals) + "\n\n")
                rb.add("remove the traffic totals", functools.partial(shutil.rmtree, d, ignore_errors=True))

    def _drop(self, path: Path) -> None:
        """Delete a received subvolume (read-only, which a delete allows; made writable it would not be)."""
        if path.exists():
            self.eng.storage.delete(path)

    def _drop_stale(self, ctid: int) -> None:
        """Remove what migrations of VE ctid that died (their source killed) left here long ago."""
        for stage in self.layout.pool.glob(f".migrate-{ctid}-*"):
            with contextlib.suppress(OSError, VZError):
                if time.time() - stage.stat().st_mtime > STALE_SECONDS:
                    self._drop_staging(ctid, stage.name.rsplit("-", 1)[-1])

    def _drop_staging(self, ctid: int, token: str) -> None:
        stage = self.staging(ctid, token)
        if stage.is_dir():
            for p in stage.iterdir():
                self._drop(p)
            stage.rmdir()


def _receive(directory: Path) -> None:
    """btrfs receive from this process's standard input into directory."""
    with open(os.devnull, "wb") as null:
        proc = subprocess.run(["btrfs", "receive", "-e", str(directory)], stdin=sys.stdin.buffer, stdout=null,
                              stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        err = " ".join(proc.stderr.decode(errors="replace").split())[-300:]
        raise CommandFailed(f"btrfs receive on the destination failed: {err or proc.returncode}")


def _range_state(ctid: int, host: int, source_root: str) -> str:
    """Whether host id range ``host`` is free on this host for VE ``ctid`` coming from ``source_root``."""
    from . import idmap

    owner = idmap._read_owner(int(host))
    if owner is None:
        return "free"
    if source_root and owner == idmap._owner_key(Path(source_root), ctid):
        return "source"  # (both roots on one host: the source hands it over after the dump)
    return "taken"


def node_id(root: Path) -> str:
    """This node and root, as the other side can compare it: machine id, device and inode of the root."""
    st = os.stat(root)
    return f"{_machine_id()}:{st.st_dev}:{st.st_ino}"


def _machine_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/etc/machine-id").read_text().strip()
    return ""


def _token(value: str) -> str:
    if not _TOKEN.match(str(value)):
        raise InvalidInput(f"invalid migration token {value!r}")
    return value


def _uuid(value: str) -> str:
    if not _UUID.match(str(value)):
        raise InvalidInput(f"invalid subvolume UUID {value!r}")
    return value


def _key(value: str) -> str:
    if not _KEY.match(str(value)):
        raise InvalidInput(f"invalid VE config key {value!r} in the migration plan")
    return str(value)


@contextlib.contextmanager
def base_lock(layout):
    """One template base made or received at a time on a node (two migrations may want the same)."""
    layout.lockdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lockdir / "migrate-base.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not flock_within(fd, 600):
            raise Busy("another migration is sending a template base; try again")
        yield
    finally:
        os.close(fd)


def _base_name(value: str) -> str:
    if not value.startswith(BASE_PREFIX) or not _UUID.match(value[len(BASE_PREFIX):]):
        raise InvalidInput(f"invalid template base name {value!r}")
    return value


def _name(value: str) -> str:
    """A name received from the source for a file in the staging directory: one plain component."""
    value = str(value)
    if not value or "/" in value or value in (".", "..") or "\0" in value or len(value) > 200:
        raise InvalidInput(f"invalid name {value!r}")
    return value


def run_agent(root: str, op: str, args: list[str]) -> dict:
    """Run one agent operation; its JSON input (commit's plan) is read from standard input."""
    agent = Agent(root)
    if op == "probe":
        rng = int(args[2]) if len(args) > 2 and args[2].isdigit() and len(args[2]) <= 10 else None
        return agent.probe(validate.ctid(args[0]), args[1], rng, args[3] if len(args) > 3 else "")
    if op == "receive":
        return agent.receive(validate.ctid(args[0]), _token(args[1]))
    if op == "receive-base":
        return agent.receive_base(args[0], args[1])
    if op == "land":
        return agent.land(validate.ctid(args[0]), _token(args[1]), start=args[2:] == ["start"],
                          resume=args[2:] == ["resume"])
    if op == "start":
        return agent.start(validate.ctid(args[0]), _token(args[1]))
    if op == "finish":
        return agent.finish(validate.ctid(args[0]), _token(args[1]))
    if op == "abort":
        return agent.abort(validate.ctid(args[0]), _token(args[1]), keep=args[2:] == ["keep"])
    raise InvalidInput(f"unknown agent operation {op!r}")


def agent_main(root: str, op: str, args: list[str]) -> int:
    """Print the operation's result (or its error) as one JSON line; exit 0 on success."""
    try:
        result = {"ok": True, **run_agent(root, op, args)}
        code = 0
    except VZError as e:
        result = {"ok": False, "error": e.message, "kind": type(e).__name__}
        code = e.exit_code
    except (IndexError, KeyError, ValueError, TypeError) as e:
        result = {"ok": False, "error": f"bad request to the migration agent ({op}): {e!r}", "kind": "InvalidInput"}
        code = 2
    print(json.dumps(result), flush=True)
    return code
