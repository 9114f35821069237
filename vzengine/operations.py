"""The Engine's methods for the operations that live in modules of their own (snapshots, clones,
backups, reinstalls, checkpoints): one line each, so that callers keep one object to talk to.

Each operation module takes the Engine as its first argument and never imports engine.py at run
time, so this module can import them all: the import graph stays free of cycles (test_layers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from . import backup, backupdir, checkpoint, clone, images, reinstall, snapshots, validate
from .progress import Progress
from .progress import quiet as _quiet

if TYPE_CHECKING:
    from .engine import Engine, VEInfo


class Operations:
    """Mixed into Engine: each method hands ``self`` to the module that does the work."""

    @property
    def _engine(self) -> Engine:
        """``self``, which is an Engine: Operations is only ever mixed into it."""
        return cast("Engine", self)

    # --- snapshots.py, clone.py, reinstall.py ---------------------------------------------------
    def snapshot(self, ctid, name: str | None = None, description: str = "", progress: Progress = _quiet):
        return snapshots.snapshot(self._engine, ctid, name, description, progress=progress)

    def snapshot_list(self, ctid, sizes: bool = True):
        return snapshots.snapshot_list(self._engine, ctid, sizes=sizes)

    def snapshot_switch(self, ctid, name: str, progress: Progress = _quiet) -> VEInfo:
        return snapshots.snapshot_switch(self._engine, ctid, name, progress=progress)

    def snapshot_delete(self, ctid, name: str, progress: Progress = _quiet) -> None:
        snapshots.snapshot_delete(self._engine, ctid, name, progress=progress)

    def clone(self, src, dst, linked: bool = False, hostname: str | None = None, snapshot: str | None = None,
              progress: Progress = _quiet, **params) -> VEInfo:
        return clone.clone(self._engine, src, dst, linked=linked, hostname=hostname, snapshot=snapshot,
                           progress=progress, **params)

    def reinstall(self, ctid, ostemplate: str | None = None, keep=(), snapshot: bool = True,
                  progress: Progress = _quiet) -> VEInfo:
        return reinstall.reinstall(self._engine, ctid, ostemplate, keep=keep, snapshot=snapshot, progress=progress)

    # --- backup.py, backupdir.py ----------------------------------------------------------------
    def backup(self, ctid, directory=None, progress: Progress = _quiet):
        return backup.backup(self._engine, ctid, directory, progress=progress)

    def backup_verify(self, path, progress: Progress = _quiet) -> dict:
        return backup.verify(path, progress=progress)

    def restore(self, path, ctid=None, force: bool = False, progress: Progress = _quiet) -> VEInfo:
        return backup.restore(self._engine, path, ctid, force=force, progress=progress)

    def restore_named(self, name, ctid=None, directory=None, force: bool = False,
                      progress: Progress = _quiet) -> VEInfo:
        """Restore backup file ``name`` (no path) from the backup directory, never following a link."""
        return backup.restore_named(self._engine, name, ctid, directory, force=force, progress=progress)

    def backup_verify_named(self, name, directory=None, progress: Progress = _quiet) -> dict:
        return backup.verify_named(self._engine, name, directory, progress=progress)

    def backup_delete_named(self, name, directory=None) -> None:
        backupdir.delete_named(self._engine, name, directory)

    # --- checkpoint.py, images.py ---------------------------------------------------------------
    def suspend(self, ctid, progress: Progress = _quiet) -> dict:
        return checkpoint.suspend(self._engine, ctid, progress=progress)

    def resume(self, ctid, progress: Progress = _quiet) -> dict:
        return checkpoint.resume(self._engine, ctid, progress=progress)

    def is_suspended(self, ctid) -> bool:
        return images.is_suspended(self._engine, validate.ctid(ctid))
