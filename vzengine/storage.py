"""Storage backends for VE roots: a btrfs pool (loop image or existing directory) or plain dirs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

from . import accounting, seccomp, validate
from .errors import CommandFailed, InvalidInput, Unsupported
from .layout import Layout
from .run import run

log = logging.getLogger(__name__)


def mountpoints() -> dict[str, str]:
    """Return {mount point: fs type} from /proc/self/mountinfo."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            mnt = pre.split()[4].encode().decode("unicode_escape")
            out[mnt] = post.split()[0]
    return out


@contextlib.contextmanager
def _pool_lock(layout: Layout):
    layout.lockdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lockdir / "pool.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Storage:
    """Interface: one volume (directory tree) per VE root, template and snapshot."""

    kind = "base"
    can_snapshot = False
    can_quota = False

    def __init__(self, layout: Layout):
        self.layout = layout

    def ensure(self) -> None:
        for sub in ("templates", "private", "snapshots"):
            (self.layout.pool / sub).mkdir(parents=True, exist_ok=True)

    def create(self, path: Path) -> None:
        raise NotImplementedError

    def clone(self, src: Path, dst: Path, readonly: bool = False) -> None:
        raise NotImplementedError

    def delete(self, path: Path) -> None:
        raise NotImplementedError

    def set_readonly(self, path: Path, readonly: bool) -> None:
        pass

    def teardown(self) -> None:
        """Release host resources of the pool (unmount), keeping its data."""

    def describe(self) -> str:
        return self.kind

    def lxc_lines(self) -> list[str]:
        """LXC config lines every VE on this storage gets: the seccomp profile that keeps it inside its quota."""
        return seccomp.lxc_lines(self.layout)

    def pool_info(self) -> dict:
        """What the pool is, its size and free space, and whether disk quotas hold on it."""
        st = os.statvfs(self.layout.pool)
        return {
            "backend": self.kind,
            "path": str(self.layout.pool),
            "size_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize,
            "quota_enabled": False,
            "quota_consistent": None,
            "quota_enforced": False,
            "quota_problem": "this backend has no disk quota",
            "quota_rescanned_at": None,
            "quota_rescan_seconds": None,
            "quota_inconsistent_seen_at": None,
            "quota_rescan_error": None,
            "nested_subvolumes": [],
        }


class DirStorage(Storage):
    """Plain directories: works everywhere; no instant snapshots, no disk quota, full copies."""

    kind = "dir"

    def create(self, path: Path) -> None:
        path.mkdir(mode=0o755)

    def clone(self, src: Path, dst: Path, readonly: bool = False) -> None:
        run(["cp", "-a", "--reflink=auto", str(src), str(dst)], what=f"copy {src.name}")

    def delete(self, path: Path) -> None:
        if path.exists():
            run(["rm", "-rf", "--one-file-system", str(path)], what=f"remove {path}")


class BtrfsStorage(Storage):
    """A btrfs pool: one subvolume per VE, templates and snapshots as read-only subvolumes."""

    can_snapshot = True
    can_quota = True

    def __init__(self, layout: Layout, loop: bool):
        super().__init__(layout)
        self.loop = loop
        self.kind = "btrfs-loop" if loop else "btrfs"

    def is_mounted(self) -> bool:
        return mountpoints().get(str(self.layout.pool)) == "btrfs"

    def ensure(self) -> None:
        pool = self.layout.pool
        with _pool_lock(self.layout):
            if self.loop and not self.is_mounted():
                self._mount_loop()
            elif not self.loop:
                fs = run(["stat", "-f", "-c", "%T", str(pool)], what="check POOL_PATH").stdout.strip()
                if fs != "btrfs":
                    raise InvalidInput(f"POOL_PATH {pool} is on {fs}, not btrfs")
            super().ensure()
            self.check_quota()

    def _mount_loop(self) -> None:
        img, pool = self.layout.pool_image, self.layout.pool
        created = False
        if not img.exists():
            with open(img, "wb") as f:
                f.truncate(self.layout.pool_size)
            created = True
        try:
            if created:
                run(["mkfs.btrfs", "-q", "-L", f"vz-{self.layout.tag}", str(img)], what="format the pool")
            pool.mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", "btrfs", "-o", "loop,noatime", str(img), str(pool)], what="mount the pool")
        except Exception:
            if created:
                img.unlink(missing_ok=True)
            raise
        if created:
            run(["btrfs", "quota", "enable", str(pool)], what="enable quota on the pool")
            # Enabling starts a rescan, and until it ends the qgroup data reads as inconsistent.
            run(["btrfs", "quota", "rescan", "-W", str(pool)], what="wait for the first qgroup rescan")

    def teardown(self) -> None:
        if self.loop and self.is_mounted():
            run(["umount", str(self.layout.pool)], what="unmount the pool")

    def grow(self, new_size) -> int:
        """Grow the loop image to ``new_size`` bytes, online; return the new size."""
        if not self.loop:
            raise Unsupported("only a loop-image pool can be grown by vzctl; grow your btrfs device yourself")
        size = validate.size(new_size, what="pool size")
        img = self.layout.pool_image
        if size <= img.stat().st_size:
            raise InvalidInput(f"the pool is already {validate.human_size(img.stat().st_size)}; a pool can only grow")
        with open(img, "r+b") as f:
            f.truncate(size)
        dev = self._loop_device()
        run(["losetup", "-c", dev], what="resize the loop device")
        run(["btrfs", "filesystem", "resize", "max", str(self.layout.pool)], what="grow the pool")
        return size

    def _loop_device(self) -> str:
        out = run(["losetup", "-j", str(self.layout.pool_image)], what="find the pool's loop device").stdout
        if not out.strip():
            raise CommandFailed("the pool image is not attached to a loop device")
        return out.split(":", 1)[0]

    def create(self, path: Path) -> None:
        run(["btrfs", "-q", "subvolume", "create", str(path)], what=f"create subvolume {path.name}")

    def clone(self, src: Path, dst: Path, readonly: bool = False) -> None:
        cmd = ["btrfs", "-q", "subvolume", "snapshot", *(["-r"] if readonly else []), str(src), str(dst)]
        run(cmd, what=f"snapshot {src.name}")

    def set_readonly(self, path: Path, readonly: bool) -> None:
        run(["btrfs", "property", "set", "-ts", str(path), "ro", "true" if readonly else "false"],
            what=f"set {path.name} read-only={readonly}")

    def delete(self, path: Path) -> None:
        if not path.exists():
            return
        if not self.is_subvolume(path):
            shutil.rmtree(path)
            return
        try:
            run(["btrfs", "-q", "subvolume", "delete", str(path)], what=f"delete subvolume {path.name}")
            return
        except CommandFailed:
            nested = self._nested_subvolumes(path)
            if not nested:
                raise
        # The VE's root made subvolumes of its own inside: delete those first, deepest first.
        for sub in sorted(nested, key=lambda p: -len(p.parts)):
            self.set_readonly(sub, False)
            run(["btrfs", "-q", "subvolume", "delete", str(sub)], what=f"delete subvolume {sub}")
        run(["btrfs", "-q", "subvolume", "delete", str(path)], what=f"delete subvolume {path.name}")

    @staticmethod
    def is_subvolume(path: Path) -> bool:
        try:
            return os.lstat(path).st_ino == 256
        except FileNotFoundError:
            return False

    @staticmethod
    def _nested_subvolumes(top: Path) -> list[Path]:
        found: list[Path] = []
        top_dev = os.lstat(top).st_dev
        for dirpath, dirnames, _ in os.walk(top):
            keep = []
            for d in dirnames:
                p = Path(dirpath, d)
                st = os.lstat(p)
                if st.st_ino == 256 and st.st_dev != top_dev:
                    found.append(p)
                keep.append(d)
            dirnames[:] = keep
        return found

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
        consistent = self.quota_consistent()
        if consistent is not False:
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
        proc = run(["btrfs", "quota", "rescan", "-w", pool], check=False, what="rescan the pool's qgroups")
        if proc.returncode != 0:
            if "in progress" not in (proc.stderr + proc.stdout):
                raise CommandFailed(f"rescan the pool's qgroups: {(proc.stderr or proc.stdout).strip()[-300:]}",
                                    cmd=proc.args, returncode=proc.returncode)
            run(["btrfs", "quota", "rescan", "-W", pool], what="wait for the qgroup rescan under way")

    def nested_subvolumes(self) -> list[dict]:
        """Subvolumes inside a VE, template or snapshot: each has a qgroup of its own, outside any VE's limit."""
        pool = self.layout.pool
        ours: set[int] = set()
        for pattern in ("private/*", "templates/*", "snapshots/*/*"):
            for p in pool.glob(pattern):
                if self.is_subvolume(p) and (sid := accounting.subvolume_id(p)) is not None:
                    ours.add(sid)
        parent: dict[int, int] = {}
        paths: dict[int, str] = {}
        out = run(["btrfs", "subvolume", "list", str(pool)], what="list the pool's subvolumes").stdout
        for line in out.splitlines():
            # "ID 260 gen 25 top level 256 path private/101/nest"
            parts = line.split(maxsplit=8)
            if len(parts) == 9 and parts[0] == "ID" and parts[5] == "level" and parts[7] == "path":
                sid = int(parts[1])
                parent[sid], paths[sid] = int(parts[6]), parts[8]
        qdir = accounting.qgroups_dir(pool)
        found = []
        for sid in sorted(paths):
            up, seen = parent.get(sid), set()
            while up is not None and up not in ours and up not in seen:
                seen.add(up)
                up = parent.get(up)
            if up in ours:
                used = accounting._int(accounting.read_fast(f"{qdir}/0_{sid}/referenced")) if qdir else None
                found.append({"id": sid, "path": paths[sid], "referenced_bytes": used})
        return found

    def pool_info(self) -> dict:
        info = super().pool_info()
        state = accounting.quota_state(self.layout.pool)
        record = self._read_record()
        consistent = self.quota_consistent() if state["enabled"] else None
        nested = self.nested_subvolumes()
        problem = None
        if not state["enabled"]:
            problem = f"quota is off on the pool: run 'btrfs quota enable {self.layout.pool}', then restart the VEs"
        elif consistent is False:
            problem = "the qgroup data is inconsistent: the kernel counts no writes until a rescan"
        elif nested:
            problem = f"{len(nested)} subvolume(s) inside VEs are outside every VE's quota"
        info.update(
            quota_enabled=state["enabled"],
            quota_consistent=consistent,
            quota_enforced=state["enabled"] and consistent is not False,
            quota_problem=problem,
            quota_rescanned_at=record.get("rescanned_at"),
            quota_rescan_seconds=record.get("rescan_seconds"),
            quota_inconsistent_seen_at=record.get("inconsistent_seen_at"),
            quota_rescan_error=record.get("rescan_error"),
            nested_subvolumes=nested,
        )
        return info

    def usage(self, path: Path) -> int | None:
        """Bytes referenced by the subvolume (from its qgroup), or None when unknown."""
        try:
            out = run(["btrfs", "qgroup", "show", "-f", "--raw", str(path)], what="read qgroup").stdout
        except CommandFailed:
            return None
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].startswith("0/"):
                return int(parts[1])
        return None


def open_storage(layout: Layout) -> Storage:
    if layout.storage == "dir":
        return DirStorage(layout)
    return BtrfsStorage(layout, loop=layout.storage == "btrfs-loop")
