"""Snapshots, clones, backups, restore, reinstall and checkpoints (issue 5).

Snapshots are read-only btrfs subvolumes in ``<pool>/snapshots/<ctid>/<name>``, each with its
metadata beside it in ``.<name>.json`` (snapshot names start with a letter or digit, so the two
never collide). Taking one is instant and the VE keeps running; switching to one stops the VE
if it runs, swaps its root for a writable copy of the snapshot and starts it again. Clones,
restores and reinstalls build the new root aside and swap it in the same way, so a failure at
any step puts the old root back. Backups live in ``backup.py``, suspend/resume in
``checkpoint.py``; this module holds the shared pieces, the engine feature and the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint, rootfs, validate
from .errors import AlreadyExists, CommandFailed, InvalidInput, NotFound, Unsupported
from .features import Feature
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .run import run
from .veconf import VEConfig

if TYPE_CHECKING:
    from .engine import Engine, VEInfo


# Config keys naming things that must be unique on a host (addresses, MACs, port forwards; the
# network feature owns them): a clone, or a restore under another id, does not inherit them.
UNIQUE_KEYS = re.compile(r"^(IP_ADDRESS|IP6_ADDRESS|PORTFWD|PORT_?FORWARD\w*|NETIF\w*|\w*_MAC|MAC\w*|HWADDR\w*|IDMAP)$")




def is_unique_key(key: str) -> bool:
    return bool(UNIQUE_KEYS.match(key))


# --- shared pieces ----------------------------------------------------------------------------

def _require_snapshots(eng: Engine, what: str = "snapshots") -> None:
    eng.ensure_ready()
    if not eng.storage.can_snapshot:
        raise Unsupported(f"{what} need the btrfs backend; this root keeps VEs in plain directories "
                          "(STORAGE=dir), which cannot be snapshotted (use vzctl backup for a copy)")


def temp_snapshot(eng: Engine, ctid: int, purpose: str) -> Path:
    """A hidden read-only snapshot of the VE's root (for a backup or a full clone); drop it after."""
    snapdir = eng.layout.snapshot_dir(ctid)
    snapdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in snapdir.glob(".*-*-*"):  # left by a process that died (killed during a backup, say)
        pid = stale.name.split("-")[-2]
        if stale.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            drop_temp_snapshot(eng, stale)
            snapdir.mkdir(mode=0o700, exist_ok=True)
    path = snapdir / f".{purpose}-{os.getpid()}-{secrets.token_hex(3)}"
    eng.storage.clone(eng.layout.private(ctid), path, readonly=True)
    return path


def drop_temp_snapshot(eng: Engine, path: Path) -> None:
    if path.exists():
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the VE's snapshot directory, when this was all it held


def swap_root(eng: Engine, ctid: int, new: Path, rb: Rollback) -> Path:
    """Put ``new`` in place as the (stopped) VE's root; return where the old root went.

    Both renames are undone by ``rb``; the caller deletes (or keeps) the old root once it commits.
    """
    private = eng.layout.private(ctid)
    old = private.with_name(f".{ctid}.old")
    if old.exists():
        eng.storage.delete(old)  # left over by a crash
    os.rename(private, old)
    rb.add("put the old root back", lambda: os.rename(old, private))
    os.rename(new, private)
    rb.add("take the new root out", lambda: os.rename(private, new))
    return old


def _stage(eng: Engine, ctid: int, purpose: str) -> Path:
    """A free name beside the VE roots for a root being built (``.<ctid>.<purpose>``)."""
    path = eng.layout.private(ctid).with_name(f".{ctid}.{purpose}")
    if path.exists():
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)  # left over by a crash
    return path


def _qgroup(path: Path) -> tuple[int, int] | None:
    """(referenced, exclusive) bytes of a subvolume from its qgroup, or None without quota."""
    try:
        out = run(["btrfs", "qgroup", "show", "-f", "--raw", str(path)], what="read qgroup").stdout
    except CommandFailed:
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("0/") and parts[1].isdigit():
            return int(parts[1]), int(parts[2])
    return None


# --- snapshots --------------------------------------------------------------------------------

@dataclass
class SnapshotInfo:
    name: str
    created: str
    description: str = ""
    ve_state: str = ""  # running | stopped | suspended when it was taken
    ostemplate: str = ""
    referenced: int | None = None  # bytes the snapshot's files take
    exclusive: int | None = None  # bytes only it holds: what deleting it frees

    def to_dict(self) -> dict:
        return asdict(self)


def _snap_path(eng: Engine, ctid: int, name: str) -> Path:
    return eng.layout.snapshot_dir(ctid) / name


def _meta_path(eng: Engine, ctid: int, name: str) -> Path:
    return eng.layout.snapshot_dir(ctid) / f".{name}.json"


def _existing_snapshot(eng: Engine, ctid: int, name: str) -> Path:
    path = _snap_path(eng, ctid, name)
    if not path.is_dir():
        raise NotFound(f"VE {ctid} has no snapshot {name!r} (see 'vzctl snapshot-list {ctid}')")
    return path


def _write_meta(eng: Engine, ctid: int, info: SnapshotInfo) -> None:
    meta = {k: v for k, v in info.to_dict().items() if k not in ("referenced", "exclusive")}
    path = _meta_path(eng, ctid, info.name)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)


def snapshot(eng: Engine, ctid, name: str | None = None, description: str = "",
             progress: Progress = _quiet) -> SnapshotInfo:
    """Take a read-only snapshot of a VE's files; the VE keeps running."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    name = validate.snapshot_name(name) if name else time.strftime("%Y%m%d-%H%M%S")
    if len(description) > 500 or any(c in description for c in "\n\r\0"):
        raise InvalidInput("the snapshot description must be one line of at most 500 characters")
    _require_snapshots(eng)
    with eng._lock(ctid, "snapshot"):
        path = _snap_path(eng, ctid, name)
        if path.exists() or _meta_path(eng, ctid, name).exists():
            raise AlreadyExists(f"VE {ctid} already has a snapshot {name!r}")
        state = ("suspended" if checkpoint.is_suspended(eng, ctid)
                 else "running" if eng.is_running(ctid) else "stopped")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with Rollback() as rb:
            eng.storage.clone(eng.layout.private(ctid), path, readonly=True)
            rb.add("delete the snapshot", lambda: drop_temp_snapshot(eng, path))
            info = SnapshotInfo(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                description=description, ve_state=state, ostemplate=conf.ostemplate)
            _write_meta(eng, ctid, info)
            rb.commit()
    progress(100, f"VE {ctid}: snapshot {name} taken" + (" (the VE kept running)" if state == "running" else ""))
    return info


def snapshot_list(eng: Engine, ctid, sizes: bool = True) -> list[SnapshotInfo]:
    """The VE's snapshots, oldest first, with their sizes when the pool has quota enabled."""
    conf = eng.config(ctid)
    snapdir = eng.layout.snapshot_dir(conf.ctid)
    if not snapdir.is_dir():
        return []
    if sizes and eng.storage.can_snapshot:
        with contextlib.suppress(CommandFailed):  # commit, so the qgroup numbers are current
            run(["btrfs", "filesystem", "sync", str(eng.layout.pool)], what="sync the pool")
    out = []
    for path in snapdir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            meta = json.loads(_meta_path(eng, conf.ctid, path.name).read_text())
        except (OSError, ValueError):
            meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))}
        info = SnapshotInfo(name=path.name, created=meta.get("created", ""),
                            description=meta.get("description", ""), ve_state=meta.get("ve_state", ""),
                            ostemplate=meta.get("ostemplate", ""))
        if sizes and eng.storage.can_snapshot:
            q = _qgroup(path)
            if q:
                info.referenced, info.exclusive = q
        out.append(info)
    return sorted(out, key=lambda s: (s.created, s.name))


def snapshot_switch(eng: Engine, ctid, name: str, progress: Progress = _quiet) -> VEInfo:
    """Roll the VE's files back to a snapshot; a running VE is stopped and started again."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    name = validate.snapshot_name(name)
    _require_snapshots(eng)
    with eng._lock(ctid, "snapshot-switch"), Rollback() as rb:
        snap = _existing_snapshot(eng, ctid, name)
        running = eng.is_running(ctid)
        new = _stage(eng, ctid, "switch")
        eng.storage.clone(snap, new)
        rb.add("delete the copy of the snapshot", lambda: eng.storage.delete(new))
        if running:
            progress(20, f"VE {ctid} is running: stopping it to switch to snapshot {name}")
            eng._stop(conf, None, False, lambda p, m: progress(20 + p // 5, m))
            rb.add("start the VE again on its old files", lambda: eng._start(conf, _quiet))
        old = swap_root(eng, ctid, new, rb)
        eng._fail_point("snapshot-switch:after-swap")
        if running:
            progress(70, f"starting VE {ctid} again, on the files of snapshot {name}")
            eng._start(conf, lambda p, m: progress(70 + p // 4, m))
        rb.commit()
        eng.storage.delete(old)
        if checkpoint.discard(eng, ctid):
            progress(95, f"VE {ctid} was suspended: its saved processes belonged to the replaced files, "
                         "so they were discarded (start it to boot it afresh)")
    progress(100, f"VE {ctid} switched to snapshot {name}" + (" and started again" if running else ""))
    return eng._info(conf)


def snapshot_delete(eng: Engine, ctid, name: str, progress: Progress = _quiet) -> None:
    conf = eng.config(ctid)
    name = validate.snapshot_name(name)
    _require_snapshots(eng)
    with eng._lock(conf.ctid, "snapshot-delete"):
        path = _existing_snapshot(eng, conf.ctid, name)
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)
        _meta_path(eng, conf.ctid, name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    progress(100, f"VE {conf.ctid}: snapshot {name} deleted")


# --- clone ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locks(eng: Engine, ctids: list[int], operation: str):
    """Hold several VEs' locks, taken in id order so two operations never wait on each other."""
    with contextlib.ExitStack() as stack:
        for c in sorted(set(ctids)):
            stack.enter_context(eng._lock(c, operation))
        yield


def _pipe(cmd1: list[str], cmd2: list[str], what: str) -> None:
    """Run ``cmd1 | cmd2``; raise CommandFailed naming ``what`` with the failing side's errors."""
    with tempfile.TemporaryFile() as e1, tempfile.TemporaryFile() as e2:
        p1 = subprocess.Popen(cmd1, stdout=subprocess.PIPE, stderr=e1)
        p2 = subprocess.Popen(cmd2, stdin=p1.stdout, stderr=e2)
        p1.stdout.close()
        rc2, rc1 = p2.wait(), p1.wait()
        for rc, f, cmd in ((rc1, e1, cmd1), (rc2, e2, cmd2)):
            if rc != 0:
                f.seek(0)
                err = " ".join(f.read().decode(errors="replace").split())[-300:]
                raise CommandFailed(f"{what}: {cmd[0]} {cmd[1]} failed: {err or f'exit status {rc}'}")


def full_copy(eng: Engine, source: Path, dest: Path, readonly_source: bool, src_ctid: int | None = None) -> None:
    """Copy a root into ``dest`` sharing no blocks with it (btrfs send/receive, or cp -a)."""
    if not eng.storage.can_snapshot:
        run(["cp", "-a", "--reflink=never", str(source), str(dest)], what=f"copy {source}")
        return
    temp = None
    if not readonly_source:
        temp = temp_snapshot(eng, src_ctid, "clone")
        source = temp
    stage = dest.with_name(dest.name + ".recv")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(mode=0o700)
    try:
        _pipe(["btrfs", "send", "-q", str(source)], ["btrfs", "receive", "-q", str(stage)],
              what="full copy with btrfs send/receive")
        received = stage / source.name
        # A received subvolume is read-only and marked as received; -f makes it a plain writable one.
        run(["btrfs", "property", "set", "-f", "-ts", str(received), "ro", "false"],
            what="make the copy writable")
        os.rename(received, dest)
    except BaseException:
        received = stage / source.name
        if received.exists():
            with contextlib.suppress(CommandFailed):
                run(["btrfs", "property", "set", "-f", "-ts", str(received), "ro", "false"])
            eng.storage.delete(received)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if temp is not None:
            drop_temp_snapshot(eng, temp)


def clone(eng: Engine, src, dst, linked: bool = False, hostname: str | None = None,
          snapshot: str | None = None, progress: Progress = _quiet, **params) -> VEInfo:
    """Make VE ``dst`` a copy of VE ``src`` (or of one of its snapshots) with an identity of its own.

    Linked clones are btrfs snapshots (instant, sharing blocks with the source); full clones
    copy every block. The clone gets a new hostname (default ``ve<dst>``), machine-id and SSH host
    keys; addresses, MACs and port forwards are not copied: give new ones in ``params`` (the
    keyword arguments of Engine.create, checked by their features).
    """
    src_conf = eng.config(src)
    src = src_conf.ctid
    dst = validate.ctid(dst)
    if dst == src:
        raise InvalidInput("a clone needs an id of its own")
    hostname = validate.hostname(hostname) if hostname else f"ve{dst}"
    snapshot = validate.snapshot_name(snapshot) if snapshot else None
    eng.ensure_ready()
    if linked and not eng.storage.can_snapshot:
        raise Unsupported("linked clones share blocks through btrfs snapshots; this root keeps VEs in plain "
                          "directories (STORAGE=dir): make a full clone instead")
    if snapshot:
        _require_snapshots(eng, "clones of snapshots")
    values = {k: v for k, v in src_conf.values.items() if not is_unique_key(k)}
    conf = VEConfig(ctid=dst, path=eng.layout.conf(dst), values=values)
    feature_params = eng._check_features(conf, params, creating=False)
    if eng.exists(dst):
        raise AlreadyExists(f"VE {dst} already exists")
    with _locks(eng, [src, dst], "clone"), Rollback() as rb:
        if eng.exists(dst):
            raise AlreadyExists(f"VE {dst} already exists")
        private = eng.layout.private(dst)
        if private.exists() or os.path.lexists(private):
            raise AlreadyExists(f"VE {dst} has no config but its root {private} exists: remove it or pick "
                                "another id")
        if not eng.storage.can_snapshot and eng.is_running(src):
            raise Unsupported(f"VE {src} runs and this root keeps VEs in plain directories (STORAGE=dir), "
                              "which cannot be snapshotted: stop it to clone it")
        source = _existing_snapshot(eng, src, snapshot) if snapshot else eng.layout.private(src)
        what = f"VE {src}" + (f" snapshot {snapshot}" if snapshot else "")
        if linked:
            progress(20, f"linked clone of {what} (btrfs snapshot)")
            eng.storage.clone(source, private)
        else:
            progress(20, f"full copy of {what}")
            full_copy(eng, source, private, readonly_source=bool(snapshot), src_ctid=src)
        rb.add("remove the clone's root", lambda: eng.storage.delete(private))
        progress(80, "giving the clone its own identity")
        eng._set_identity(private, hostname)
        eng._write_hostname(private, hostname)
        conf.set("HOSTNAME", hostname)
        conf.set("CREATED", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        conf.set("ONBOOT", "no")
        for feature, fparams in feature_params:
            feature.apply(conf, fparams, False, rb)
        eng._fail_point("clone:before-config")
        conf.save()
        rb.add("remove the clone's config", lambda: conf.path.unlink(missing_ok=True))
        eng._write_lxc_config(conf)
        rb.add("remove the clone's LXC config", lambda: eng.lxc.remove_config(dst))
        eng._fail_point("clone:after-config")
        rb.commit()
    progress(100, f"VE {dst} created as a {'linked' if linked else 'full'} clone of {what}")
    return eng._info(conf)


# --- reinstall --------------------------------------------------------------------------------

def _keep_path(value: str) -> str:
    """A path inside the VE to carry over on reinstall, as 'a/b' (no '..', no empty parts)."""
    parts = [p for p in str(value).strip().strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or any("\0" in p for p in parts):
        raise InvalidInput(f"invalid path to keep {value!r}: give a directory inside the VE, like home or root")
    return "/".join(parts)


def _real_dir(root: Path, rel: str) -> Path | None:
    """root/rel when every component below ``root`` is a real directory (no symlink), else None."""
    path = root
    for part in rel.split("/"):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"/{rel} in the VE is not a plain directory (a symlink or a file): "
                               "it cannot be kept")
    return path


def _carry_dir(eng: Engine, old_root: Path, new_root: Path, rel: str) -> bool:
    src = _real_dir(old_root, rel)
    if src is None:
        return False
    parent_rel, _, leaf = rel.rpartition("/")
    parent = new_root
    base = eng._base_uid()
    for part in parent_rel.split("/") if parent_rel else []:
        parent = parent / part
        if os.path.islink(parent) or (parent.exists() and not parent.is_dir()):
            raise InvalidInput(f"/{parent_rel} in the new template is not a plain directory: "
                               f"/{rel} cannot be kept")
        if not parent.exists():
            parent.mkdir(mode=0o755)
            os.chown(parent, base, base)
    dest = parent / leaf
    if os.path.islink(dest) or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    run(["cp", "-a", "--reflink=auto", str(src), str(parent) + "/"], what=f"keep /{rel}")
    return True


def _carry_identity(eng: Engine, conf: VEConfig, old_root: Path, new_root: Path) -> None:
    """Give the reinstalled root the VE's identity: hostname, machine-id, SSH host keys, root password."""
    base = eng._base_uid()
    hostname = conf.hostname or f"ve{conf.ctid}"
    eng._set_identity(new_root, hostname)  # fresh ones first, for whatever the old root lacks
    eng._write_hostname(new_root, hostname)
    with contextlib.suppress(rootfs.UnsafePath):
        mid = rootfs.read_file(old_root, "etc/machine-id")
        if mid and mid.strip():
            rootfs.write_file(new_root, "etc/machine-id", mid, mode=0o444, uid=base, gid=base)
    if rootfs.file_owner(new_root, "etc/ssh") is not None:
        for kind in ("ed25519", "ecdsa", "rsa"):
            for suffix, mode in (("", 0o600), (".pub", 0o644)):
                rel = f"etc/ssh/ssh_host_{kind}_key{suffix}"
                with contextlib.suppress(rootfs.UnsafePath):
                    data = rootfs.read_file(old_root, rel)
                    if data:
                        rootfs.write_file(new_root, rel, data, mode=mode, uid=base, gid=base)
    if conf.get_list("NAMESERVER"):
        eng._write_resolv(new_root, conf.get_list("NAMESERVER"), conf.get("SEARCHDOMAIN"))
    with contextlib.suppress(rootfs.UnsafePath):
        _carry_root_password(eng, old_root, new_root)


def _carry_root_password(eng: Engine, old_root: Path, new_root: Path) -> None:
    old = rootfs.read_file(old_root, "etc/shadow")
    new = rootfs.read_file(new_root, "etc/shadow")
    if not old or not new:
        return
    root_line = next((ln for ln in old.decode(errors="replace").splitlines() if ln.startswith("root:")), None)
    if root_line is None:
        return
    lines = [root_line if ln.startswith("root:") else ln for ln in new.decode(errors="replace").splitlines()]
    owner = rootfs.file_owner(new_root, "etc/shadow")
    uid, gid, mode = owner if owner else (eng._base_uid(), eng._base_uid(), 0o640)
    rootfs.write_file(new_root, "etc/shadow", "\n".join(lines) + "\n", mode=mode, uid=uid, gid=gid)


def reinstall(eng: Engine, ctid, ostemplate: str | None = None, keep: list[str] | tuple[str, ...] = (),
              snapshot: bool = True, progress: Progress = _quiet) -> VEInfo:
    """Give a VE a fresh root from a template, keeping its id, config, addresses, limits and identity.

    ``keep`` lists directories carried over from the old root (e.g. home, root). On btrfs the old
    root is kept as snapshot ``before-reinstall-<time>`` (unless ``snapshot`` is False); a
    failure at any step puts it back. A running VE is stopped and started again.
    """
    conf = eng.config(ctid)
    ctid = conf.ctid
    template = validate.template_name(ostemplate or conf.ostemplate)
    eng.templates.spec(template)  # unknown template: fails here, before any change
    keep = [_keep_path(k) for k in keep]
    for rel in keep:  # a symlink or a file where a kept directory should be: refuse before any change
        _real_dir(eng.layout.private(ctid), rel)
    eng.ensure_ready()
    snap_name = f"before-reinstall-{time.strftime('%Y%m%d-%H%M%S')}"
    with eng._lock(ctid, "reinstall"), Rollback() as rb:
        tpl_root = eng.templates.ensure(template, progress=lambda p, m: progress(p // 5, m))
        private = eng.layout.private(ctid)
        new = _stage(eng, ctid, "reinstall")
        progress(25, f"making a fresh root from template {template}")
        eng.storage.clone(tpl_root, new)
        rb.add("remove the fresh root", lambda: eng.storage.delete(new))
        running = eng.is_running(ctid)
        if running:
            progress(35, f"VE {ctid} is running: stopping it to reinstall")
            eng._stop(conf, None, False, lambda p, m: progress(35 + p // 10, m))
            rb.add("start the VE again on its old root", lambda: eng._start(conf, _quiet))
        _carry_identity(eng, conf, private, new)
        for rel in keep:
            progress(55, f"keeping /{rel}")
            if not _carry_dir(eng, private, new, rel):
                progress(55, f"the VE has no /{rel}: nothing to keep there")
        old = swap_root(eng, ctid, new, rb)
        old_text, old_template = conf.path.read_text(), conf.ostemplate
        conf.set("OSTEMPLATE", template)
        conf.save()
        rb.add("put the old config back", lambda: (conf.path.write_text(old_text), eng._write_lxc_config(
            VEConfig.load(conf.path, ctid))))
        eng._write_lxc_config(conf)
        eng._fail_point("reinstall:after-swap")
        if running:
            progress(80, f"starting VE {ctid} again")
            eng._start(conf, lambda p, m: progress(80 + p // 6, m))
        rb.commit()
        kept_as = None
        if snapshot and eng.storage.can_snapshot:
            path = _snap_path(eng, ctid, snap_name)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(old, path)
            eng.storage.set_readonly(path, True)
            _write_meta(eng, ctid, SnapshotInfo(
                name=snap_name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                description=f"the root before reinstalling from {template}", ve_state="stopped",
                ostemplate=old_template))
            kept_as = snap_name
        else:
            eng.storage.delete(old)
        if checkpoint.discard(eng, ctid):
            progress(95, f"VE {ctid} was suspended: its saved processes belonged to the old system and were "
                         "discarded")
    progress(100, f"VE {ctid} reinstalled from {template}" +
             (f"; its old root is snapshot {kept_as} (vzctl snapshot-delete {ctid} --name {kept_as} frees it)"
              if kept_as else ""))
    return eng._info(conf)


# --- the engine feature -----------------------------------------------------------------------

class SnapshotsFeature(Feature):
    """Checkpoint images and snapshots over a VE's life: status, start and destroy."""

    name = "snapshots"

    def after_start(self, conf: VEConfig) -> None:
        # A plain start boots the VE afresh: the processes saved by a suspend can no longer
        # come back onto files that have moved on, so their images are dropped.
        if not checkpoint.is_resuming(self.engine, conf.ctid):
            checkpoint.discard(self.engine, conf.ctid)

    def destroy(self, conf: VEConfig) -> None:
        checkpoint.discard(self.engine, conf.ctid)

    def purge(self) -> None:
        shutil.rmtree(self.engine.layout.root / "dump", ignore_errors=True)

    def info(self, conf: VEConfig, running: bool) -> dict:
        out: dict = {}
        if not running and checkpoint.is_suspended(self.engine, conf.ctid):
            out["suspended"] = True
        snapdir = self.engine.layout.snapshot_dir(conf.ctid)
        with contextlib.suppress(OSError):
            out["snapshots"] = sum(1 for p in snapdir.iterdir() if not p.name.startswith(".") and p.is_dir())
        return out


# --- command line -----------------------------------------------------------------------------

VZLIST_FIELDS = {
    "snapshots": ("SNAPS", 5, lambda i: i.extra.get("snapshots", 0)),
    "state": ("STATE", 9, lambda i: "suspended" if i.extra.get("suspended") else i.status),
}

COMMANDS = ("snapshot", "snapshot-list", "snapshot-switch", "snapshot-delete", "clone", "backup",
            "backup-list", "backup-verify", "restore", "reinstall", "suspend", "resume")


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v.strip()]


def register_commands(sub) -> None:
    from .cli import vzctl as vzctl_cli

    s = sub.add_parser("snapshot", help="take a read-only snapshot of a VE's files (it keeps running)")
    s.add_argument("ctid")
    s.add_argument("--name", help="snapshot name (default: the date and time)")
    s.add_argument("--description", default="")

    s = sub.add_parser("snapshot-list", help="list a VE's snapshots with their time and size")
    s.add_argument("ctid")
    s.add_argument("-j", "--json", action="store_true")

    for cmd, text in (("snapshot-switch", "roll a VE back to a snapshot (stopping and starting it as needed)"),
                      ("snapshot-delete", "delete a snapshot")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("ctid")
        s.add_argument("snapshot", nargs="?", help="snapshot name (or --name)")
        s.add_argument("--name", dest="name")

    s = sub.add_parser("clone", help="make a new VE from a VE (or one of its snapshots), with its own identity")
    s.add_argument("ctid", help="the VE to copy")
    s.add_argument("new_ctid", help="id of the new VE")
    s.add_argument("--linked", action="store_true", help="share blocks with the source (btrfs snapshot)")
    s.add_argument("--hostname", help="the clone's hostname (default: ve<new id>)")
    s.add_argument("--snapshot", help="copy this snapshot of the VE instead of its current files")
    for mod in vzctl_cli.cli_modules():
        if hasattr(mod, "add_set_options") and mod.__name__ != __name__:
            mod.add_set_options(s)

    s = sub.add_parser("backup", help="write a backup archive of a VE (taken from a snapshot while it runs)")
    s.add_argument("ctid")
    s.add_argument("--dir", help="directory for the archive (default: <root>/backups)")

    s = sub.add_parser("backup-list", help="list backup archives")
    s.add_argument("ctid", nargs="?")
    s.add_argument("--dir", help="directory to look in (default: <root>/backups)")

    s = sub.add_parser("backup-verify", help="check a backup archive end to end (checksums and manifest)")
    s.add_argument("file")

    s = sub.add_parser("restore", help="restore a backup archive as a VE (its own id unless one is given)")
    s.add_argument("file")
    s.add_argument("ctid", nargs="?", help="id to restore as (default: the id it was taken from)")
    s.add_argument("--force", action="store_true", help="replace an existing VE of that id")

    s = sub.add_parser("reinstall", help="give a VE a fresh system from a template, keeping id, config and addresses")
    s.add_argument("ctid")
    s.add_argument("--ostemplate", help="template to install (default: the VE's own)")
    s.add_argument("--keep", action="append", type=_csv, default=[], metavar="DIR[,DIR]",
                   help="directories to carry over, e.g. home,root")
    s.add_argument("--no-snapshot", action="store_true",
                   help="delete the old root instead of keeping it as a snapshot")

    s = sub.add_parser("suspend", help="checkpoint a running VE to disk with CRIU and stop it")
    s.add_argument("ctid")
    s = sub.add_parser("resume", help="bring a suspended VE back, processes and all")
    s.add_argument("ctid")


def _print_snapshots(snaps: list[SnapshotInfo], as_json: bool) -> None:
    if as_json:
        json.dump([s.to_dict() for s in snaps], sys.stdout, indent=1)
        print()
        return
    print(f"{'NAME':<28} {'CREATED':<25} {'STATE':<9} {'SIZE':>8} {'OWN':>8}  DESCRIPTION")
    for s in snaps:
        size = validate.human_size(s.referenced) if s.referenced is not None else "-"
        own = validate.human_size(s.exclusive) if s.exclusive is not None else "-"
        print(f"{s.name:<28} {s.created:<25} {s.ve_state or '-':<9} {size:>8} {own:>8}  {s.description}".rstrip())


def _snapshot_arg(args) -> str:
    name = args.name or args.snapshot
    if not name:
        raise InvalidInput(f"{args.command} needs a snapshot name (--name NAME)")
    if args.name and args.snapshot and args.name != args.snapshot:
        raise InvalidInput("give the snapshot name once")
    return name


def run_command(eng: Engine, args: argparse.Namespace, progress: Progress) -> int | None:
    from . import backup as backups

    cmd = args.command
    if cmd not in COMMANDS:
        return None
    if cmd == "snapshot":
        info = snapshot(eng, args.ctid, args.name, args.description, progress=progress)
        print(f"VE {validate.ctid(args.ctid)}: snapshot {info.name} taken")
    elif cmd == "snapshot-list":
        _print_snapshots(snapshot_list(eng, args.ctid), args.json)
    elif cmd == "snapshot-switch":
        name = _snapshot_arg(args)
        snapshot_switch(eng, args.ctid, name, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} switched to snapshot {name}")
    elif cmd == "snapshot-delete":
        name = _snapshot_arg(args)
        snapshot_delete(eng, args.ctid, name, progress=progress)
        print(f"VE {validate.ctid(args.ctid)}: snapshot {name} deleted")
    elif cmd == "clone":
        from .cli import vzctl as vzctl_cli

        info = clone(eng, args.ctid, args.new_ctid, linked=args.linked, hostname=args.hostname,
                     snapshot=args.snapshot, progress=progress, **vzctl_cli.feature_params(args))
        print(f"VE {info.ctid} created as a {'linked' if args.linked else 'full'} clone of VE "
              f"{validate.ctid(args.ctid)} (hostname {info.hostname})")
    elif cmd == "backup":
        result = backups.backup(eng, args.ctid, args.dir, progress=progress)
        print(result.path)
    elif cmd == "backup-list":
        ctid = validate.ctid(args.ctid) if args.ctid else None
        for b in backups.list_backups(eng, args.dir, ctid):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["mtime"]))
            print(f"{when}  {validate.human_size(b['size']):>8}  {b['path']}")
    elif cmd == "backup-verify":
        m = backups.verify(args.file, progress=progress)
        print(f"{args.file}: OK (VE {m['ctid']}, {m['ostemplate']}, taken {m['created']}, {m['files']} files, "
              f"{validate.human_size(m['bytes'])}, sha256 {m['sha256']})")
    elif cmd == "restore":
        info = backups.restore(eng, args.file, args.ctid, force=args.force, progress=progress)
        print(f"VE {info.ctid} restored from {args.file} ({info.status})")
    elif cmd == "reinstall":
        keep = [k for group in args.keep for k in group]
        info = reinstall(eng, args.ctid, args.ostemplate, keep=keep, snapshot=not args.no_snapshot,
                         progress=progress)
        print(f"VE {info.ctid} reinstalled from {info.ostemplate}")
    elif cmd == "suspend":
        r = checkpoint.suspend(eng, args.ctid, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} suspended ({validate.human_size(r['bytes'])} of images)")
    elif cmd == "resume":
        checkpoint.resume(eng, args.ctid, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} resumed")
    return 0
