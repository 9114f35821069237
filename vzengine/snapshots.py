"""Snapshots (issue 5): read-only copies of a VE's files, taken while it runs, and rolling back to one.

Snapshots are read-only volumes (btrfs subvolumes) in ``<pool>/snapshots/<ctid>/<name>``, each with
its metadata beside it in ``.<name>.json`` (snapshot names start with a letter or digit, so the two
never collide). Taking one is instant and the VE keeps running; switching to one stops the VE
if it runs, swaps its root for a writable copy of the snapshot and starts it again (roots.py).
Clones are in clone.py, reinstalls in reinstall.py, backups in backup.py, suspend/resume in
checkpoint.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import images, validate
from .errors import AlreadyExists, CommandFailed, InvalidInput, NotFound
from .features import Feature
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .roots import drop_temp_snapshot, require_snapshots, stage, swap_root

if TYPE_CHECKING:
    from .engine import Engine, VEInfo
    from .veconf import VEConfig


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


def snap_path(eng: Engine, ctid: int, name: str) -> Path:
    return eng.layout.snapshot_dir(ctid) / name


def meta_path(eng: Engine, ctid: int, name: str) -> Path:
    return eng.layout.snapshot_dir(ctid) / f".{name}.json"


def existing_snapshot(eng: Engine, ctid: int, name: str) -> Path:
    path = snap_path(eng, ctid, name)
    if not path.is_dir():
        raise NotFound(f"VE {ctid} has no snapshot {name!r} (see 'vzctl snapshot-list {ctid}')")
    return path


def write_meta(eng: Engine, ctid: int, info: SnapshotInfo) -> None:
    meta = {k: v for k, v in info.to_dict().items() if k not in ("referenced", "exclusive")}
    path = meta_path(eng, ctid, info.name)
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
    require_snapshots(eng)
    with eng._lock(ctid, "snapshot"):
        path = snap_path(eng, ctid, name)
        if path.exists() or meta_path(eng, ctid, name).exists():
            raise AlreadyExists(f"VE {ctid} already has a snapshot {name!r}")
        state = ("suspended" if images.is_suspended(eng, ctid)
                 else "running" if eng.is_running(ctid) else "stopped")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with Rollback() as rb:
            eng.storage.clone(eng.layout.private(ctid), path, readonly=True)
            rb.add("delete the snapshot", lambda: drop_temp_snapshot(eng, path))
            info = SnapshotInfo(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                description=description, ve_state=state, ostemplate=conf.ostemplate)
            write_meta(eng, ctid, info)
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
        with contextlib.suppress(CommandFailed):  # commit, so the usage numbers are current
            eng.storage.sync()
    out = []
    for path in snapdir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            meta = json.loads(meta_path(eng, conf.ctid, path.name).read_text())
        except (OSError, ValueError):
            meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))}
        info = SnapshotInfo(name=path.name, created=meta.get("created", ""),
                            description=meta.get("description", ""), ve_state=meta.get("ve_state", ""),
                            ostemplate=meta.get("ostemplate", ""))
        if sizes and eng.storage.can_snapshot:
            q = eng.storage.space(path)
            if q:
                info.referenced, info.exclusive = q
        out.append(info)
    return sorted(out, key=lambda s: (s.created, s.name))


def snapshot_switch(eng: Engine, ctid, name: str, progress: Progress = _quiet) -> VEInfo:
    """Roll the VE's files back to a snapshot; a running VE is stopped and started again."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    name = validate.snapshot_name(name)
    require_snapshots(eng)
    with eng._lock(ctid, "snapshot-switch"), Rollback() as rb:
        snap = existing_snapshot(eng, ctid, name)
        running = eng.is_running(ctid)
        new = stage(eng, ctid, "switch")
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
        if images.discard(eng, ctid):
            progress(95, f"VE {ctid} was suspended: its saved processes belonged to the replaced files, "
                         "so they were discarded (start it to boot it afresh)")
    progress(100, f"VE {ctid} switched to snapshot {name}" + (" and started again" if running else ""))
    return eng._info(conf)


def snapshot_delete(eng: Engine, ctid, name: str, progress: Progress = _quiet) -> None:
    conf = eng.config(ctid)
    name = validate.snapshot_name(name)
    require_snapshots(eng)
    with eng._lock(conf.ctid, "snapshot-delete"):
        path = existing_snapshot(eng, conf.ctid, name)
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)
        meta_path(eng, conf.ctid, name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    progress(100, f"VE {conf.ctid}: snapshot {name} deleted")


class SnapshotsFeature(Feature):
    """How many snapshots a VE has, in its status."""

    name = "snapshots"

    def info(self, conf: VEConfig, running: bool) -> dict:
        out: dict = {}
        snapdir = self.engine.layout.snapshot_dir(conf.ctid)
        with contextlib.suppress(OSError):
            out["snapshots"] = sum(1 for p in snapdir.iterdir() if not p.name.startswith(".") and p.is_dir())
        return out
