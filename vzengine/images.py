"""A suspended VE's CRIU images on disk (``<root>/dump/<ctid>``), and the feature that keeps them honest.

checkpoint.py writes and reads the images; this module only says whether a VE has some, and drops
them when they can no longer come back: at a plain start (the VE boots afresh, its files move on),
when the VE is destroyed, and when the root is purged. Small and free of CRIU, so snapshots,
backups and the engine can ask "is it suspended?" without loading the checkpoint machinery.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .features import Feature

if TYPE_CHECKING:
    from .engine import Engine
    from .veconf import VEConfig

MARKER = "vz-suspend.json"
# VEs being resumed right now, (root, ctid): their features' after_start must keep the images.
RESUMING: set[tuple[str, int]] = set()


def image_dir(eng: Engine, ctid: int) -> Path:
    return eng.layout.root / "dump" / str(ctid)


def is_suspended(eng: Engine, ctid: int) -> bool:
    """True when the VE has a complete checkpoint on disk (and so must be resumed, not booted)."""
    return (image_dir(eng, ctid) / MARKER).is_file()


def suspend_info(eng: Engine, ctid: int) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((image_dir(eng, ctid) / MARKER).read_text())
    return None


def discard(eng: Engine, ctid: int) -> bool:
    """Remove the VE's checkpoint images; return whether it was suspended."""
    d = image_dir(eng, ctid)
    was = is_suspended(eng, ctid)
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
    return was


def is_resuming(eng: Engine, ctid: int) -> bool:
    return (str(eng.layout.root), ctid) in RESUMING


class CheckpointFeature(Feature):
    """Checkpoint images over a VE's life: its status, a plain start, destroy and purge."""

    name = "checkpoint"

    def after_start(self, conf: VEConfig) -> None:
        # A plain start boots the VE afresh: the processes saved by a suspend can no longer
        # come back onto files that have moved on, so their images are dropped.
        if not is_resuming(self.engine, conf.ctid):
            discard(self.engine, conf.ctid)

    def destroy(self, conf: VEConfig) -> None:
        discard(self.engine, conf.ctid)

    def purge(self) -> None:
        shutil.rmtree(self.engine.layout.root / "dump", ignore_errors=True)

    def info(self, conf: VEConfig, running: bool) -> dict:
        return {"suspended": True} if not running and is_suspended(self.engine, conf.ctid) else {}
