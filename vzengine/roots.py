"""Building a VE root aside and swapping it in: the pieces snapshots, clones, backups, restores and
reinstalls share.

A new root is made beside the VE roots (``.<ctid>.<purpose>``), the VE is stopped if it runs, and
the two roots trade places with renames that a Rollback undoes, so a failure at any step puts the
old root back. Config keys naming what must be unique on a host are never carried to another VE.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Unsupported

if TYPE_CHECKING:
    from .engine import Engine
    from .rollback import Rollback

# Config keys naming things that must be unique on a host (addresses, MACs, port forwards; the
# network feature owns them): a clone, or a restore under another id, does not inherit them.
UNIQUE_KEYS = re.compile(r"^(IP_ADDRESS|IP6_ADDRESS|PORTFWD|PORT_?FORWARD\w*|NETIF\w*|\w*_MAC|MAC\w*|HWADDR\w*|IDMAP)$")


def is_unique_key(key: str) -> bool:
    return bool(UNIQUE_KEYS.match(key))


def require_snapshots(eng: Engine, what: str = "snapshots") -> None:
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


def stage(eng: Engine, ctid: int, purpose: str) -> Path:
    """A free name beside the VE roots for a root being built (``.<ctid>.<purpose>``)."""
    path = eng.layout.private(ctid).with_name(f".{ctid}.{purpose}")
    if path.exists():
        eng.storage.set_readonly(path, False)
        eng.storage.delete(path)  # left over by a crash
    return path
