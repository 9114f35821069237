"""Clones (issue 5): a new VE made from a VE, or from one of its snapshots, with an identity of its own."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import guest, validate
from .errors import AlreadyExists, InvalidInput, Unsupported
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .roots import drop_temp_snapshot, is_unique_key, require_snapshots, temp_snapshot
from .snapshots import existing_snapshot
from .veconf import VEConfig

if TYPE_CHECKING:
    from .engine import Engine, VEInfo


@contextlib.contextmanager
def _locks(eng: Engine, ctids: list[int], operation: str):
    """Hold several VEs' locks, taken in id order so two operations never wait on each other."""
    with contextlib.ExitStack() as stack:
        for c in sorted(set(ctids)):
            stack.enter_context(eng._lock(c, operation))
        yield


def full_copy(eng: Engine, source: Path, dest: Path, readonly_source: bool, src_ctid: int | None = None) -> None:
    """Copy a root into ``dest`` sharing no blocks with it (the storage driver's full copy).

    A root that may change under the copy (the VE runs) is first frozen in a hidden read-only snapshot.
    """
    if not eng.storage.can_snapshot:
        eng.storage.full_copy(source, dest)
        return
    temp = None
    if not readonly_source:
        assert src_ctid is not None, "a root that may change is a VE's: the caller names the VE"
        temp = temp_snapshot(eng, src_ctid, "clone")
        source = temp
    try:
        eng.storage.full_copy(source, dest)
    finally:
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
        require_snapshots(eng, "clones of snapshots")
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
        source = existing_snapshot(eng, src, snapshot) if snapshot else eng.layout.private(src)
        what = f"VE {src}" + (f" snapshot {snapshot}" if snapshot else "")
        if linked:
            progress(20, f"linked clone of {what} (btrfs snapshot)")
            eng.storage.clone(source, private)
        else:
            progress(20, f"full copy of {what}")
            full_copy(eng, source, private, readonly_source=bool(snapshot), src_ctid=src)
        rb.add("remove the clone's root", lambda: eng.storage.delete(private))
        progress(80, "giving the clone its own identity")
        guest.set_identity(private, hostname, eng._base_uid())
        guest.write_hostname(private, hostname, eng._base_uid())
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
