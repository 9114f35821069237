"""The btrfs pool's quota groups over time: the qgroups of deleted subvolumes cleaned up once they count
nothing, and the health of the qgroup data (rescanned when the kernel marks it inconsistent, since no limit
holds meanwhile). A part of storage.BtrfsStorage, which provides ``layout``, ``quota_on`` and ``quota_mode``."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import accounting, btrfs
from .errors import CommandFailed
from .run import run

if TYPE_CHECKING:
    from .layout import Layout

log = logging.getLogger("vzengine.storage")


class QuotaGroupsMixin:
    if TYPE_CHECKING:  # what BtrfsStorage provides
        layout: Layout

        def quota_on(self) -> bool: ...
        def quota_mode(self) -> str | None: ...

    # --- qgroups of deleted subvolumes ------------------------------------------------------
    # A deleted subvolume's qgroup stays (``<stale>``) and, under simple quotas, keeps counting
    # until the cleaner thread has freed its extents; destroying it before returns EBUSY. So
    # delete only remembers its id, and a later check_quota or create destroys it once it counts
    # 0 bytes. A live subvolume's qgroup never reads 0 (its root node alone is 16 KiB) and the
    # kernel refuses to destroy it (EBUSY), so an id reused after a remount is safe as well.
    @property
    def _stale_file(self) -> Path:
        return self.layout.root / "pool-stale-qgroups.json"

    def _read_stale(self) -> list[int]:
        try:
            data = json.loads(self._stale_file.read_text())
        except (OSError, ValueError):
            return []
        return [i for i in data if isinstance(i, int)] if isinstance(data, list) else []

    def _write_stale(self, ids: list[int]) -> None:
        tmp = self._stale_file.with_name(f".{self._stale_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(set(ids))) + "\n")
        os.replace(tmp, self._stale_file)

    @contextlib.contextmanager
    def _stale_lock(self) -> Iterator[None]:
        self.layout.lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lockdir / "stale-qgroups.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remember_stale(self, ids: list[int]) -> None:
        """Note qgroups to destroy later; never fails the delete that called it."""
        if not ids or not self.quota_on():
            return
        try:
            with self._stale_lock():
                self._write_stale(self._read_stale() + ids)
        except OSError as e:
            log.warning("pool %s: cannot note qgroups %s to clean up later: %s", self.layout.pool, ids, e)

    def clean_stale_qgroups(self) -> int:
        """Destroy the remembered qgroups that count 0 bytes now; return how many went.

        Those still counting (the cleaner is not done, or a snapshot or linked clone still
        shares their extents, which stay charged to them under simple quotas) stay listed.
        """
        if not self._stale_file.exists():
            return 0
        try:
            return self._clean_stale_qgroups()
        except (OSError, ValueError) as e:  # a cleanup never fails the create or check it runs in
            log.warning("pool %s: cannot clean up the qgroups of deleted subvolumes: %s", self.layout.pool, e)
            return 0

    def _clean_stale_qgroups(self) -> int:
        pool, cleaned = self.layout.pool, 0
        with self._stale_lock():
            pending = self._read_stale()
            usage = btrfs.qgroup_usage_all(pool) if pending else {}
            keep = []
            for sid in pending:
                if sid not in usage:  # gone already: the kernel drops some by itself
                    continue
                if usage[sid][0] != 0:
                    keep.append(sid)
                    continue
                try:
                    btrfs.qgroup_destroy(pool, sid)
                    cleaned += 1
                except OSError as e:
                    if e.errno != errno.ENOENT:  # EBUSY: try again next time
                        keep.append(sid)
            if keep != pending:
                self._write_stale(keep)
        return cleaned

    # --- quota health -----------------------------------------------------------------------
    @property
    def _quota_record(self) -> Path:
        return self.layout.root / "pool-quota.json"

    def _read_record(self) -> dict:
        try:
            data = json.loads(self._quota_record.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_record(self, data: dict) -> None:
        tmp = self._quota_record.with_name(f".{self._quota_record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self._quota_record)

    def quota_consistent(self) -> bool | None:
        """False when the kernel marked the pool's qgroup data inconsistent (no limit then holds)."""
        state = accounting.quota_state(self.layout.pool)
        if not state["enabled"] or state["consistent"] is not None:
            return state["consistent"] if state["enabled"] else None
        # A kernel without qgroups/inconsistent (before 6.1): btrfs-progs warns on stderr instead.
        proc = run(["btrfs", "qgroup", "show", "--raw", str(self.layout.pool)], check=False,
                   what="read the pool's qgroups")
        return "inconsistent" not in proc.stderr

    def check_quota(self) -> bool | None:
        """Rescan the pool's qgroups when their data is inconsistent; return whether they are consistent now.

        Cheap when all is well (one sysfs read). A rescan reads every extent of the pool: it
        takes a while on a big pool, and holds the pool lock meanwhile, which is the point:
        while the data is inconsistent the kernel counts no writes, so no VE's limit holds.
        """
        self.clean_stale_qgroups()
        consistent = self.quota_consistent()
        if consistent is not False or self.quota_mode() == "squota":  # squota needs (and allows) no rescan
            return consistent
        record = self._read_record()
        record["inconsistent_seen_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.warning("the qgroup data of pool %s is inconsistent: disk quotas are not enforced; rescanning",
                    self.layout.pool)
        t0 = time.monotonic()
        error = None
        try:
            self.rescan_quota()
        except CommandFailed as e:
            error = e.message
        ok = self.quota_consistent()
        if ok is False and error is None:
            error = "the qgroup data is still inconsistent after a rescan"
        record.update(rescanned_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      rescan_seconds=round(time.monotonic() - t0, 3), rescan_error=error)
        self._write_record(record)
        if error:
            log.error("pool %s: disk quotas are NOT enforced: %s (run 'btrfs quota rescan -w %s')",
                      self.layout.pool, error, self.layout.pool)
        else:
            log.warning("pool %s: qgroups rescanned in %.1f s; disk quotas hold again",
                        self.layout.pool, record["rescan_seconds"])
        return ok

    def rescan_quota(self) -> None:
        """Recount the pool's qgroups from its extents and wait for the end (joins a rescan under way)."""
        pool = str(self.layout.pool)
        if self.quota_mode() == "squota":  # simple quotas count as they go; the kernel refuses a rescan
            return
        proc = run(["btrfs", "quota", "rescan", "-w", pool], check=False, what="rescan the pool's qgroups")
        if proc.returncode != 0:
            if "in progress" not in (proc.stderr + proc.stdout):
                raise CommandFailed(f"rescan the pool's qgroups: {(proc.stderr or proc.stdout).strip()[-300:]}",
                                    cmd=proc.args, returncode=proc.returncode)
            run(["btrfs", "quota", "rescan", "-W", pool], what="wait for the qgroup rescan under way")
