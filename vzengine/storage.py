"""Storage backends for VE roots: a btrfs pool (loop image or existing directory) or plain dirs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import accounting, btrfs, seccomp, validate
from .errors import CommandFailed, InvalidInput, Unsupported
from .layout import Layout
from .qgroups import QuotaGroupsMixin
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

    # --- disk space and quota: callers ask here and never run a backend's tools themselves ----
    def quota_on(self) -> bool:
        """Whether volumes can be given a disk quota now (the backend has one and it is enabled)."""
        return False

    def quota(self, path: Path) -> tuple[int | None, int | None]:
        """(bytes used, quota limit or None) of a volume; (None, None) when unknown."""
        return None, None

    def set_quota(self, path: Path, limit: int | None) -> None:
        """Limit a volume to ``limit`` bytes (None: no limit)."""
        raise Unsupported(f"the {self.kind} backend has no disk quota")

    def quota_mode(self) -> str | None:
        """How the pool counts disk use: "squota" (simple quotas), "qgroup" (full qgroups) or None."""
        return None

    def sync(self, path: Path | None = None) -> None:
        """Commit pending writes so that the usage numbers are current."""

    def usage(self, path: Path) -> int | None:
        """Bytes the volume's files take (its referenced bytes), or None when unknown."""
        return None

    def space(self, path: Path) -> tuple[int, int] | None:
        """(referenced, exclusive) bytes of a volume: what its files take and what only it holds."""
        return None

    def full_copy(self, src: Path, dst: Path) -> None:
        """Copy a read-only volume into ``dst`` sharing no blocks with it."""
        run(["cp", "-a", "--reflink=never", str(src), str(dst)], what=f"copy {src}")

    def block_devices(self) -> list[str]:
        """major:minor of the block devices the pool lives on (I/O throttling targets)."""
        st = os.stat(self.layout.pool)
        if os.major(st.st_dev) == 0:  # tmpfs, overlay, NFS...: no block device to throttle
            return []
        d = _whole_disk(Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
        return [d] if d else []

    def pool_info(self) -> dict:
        """What the pool is, its size and free space, and whether disk quotas hold on it."""
        st = os.statvfs(self.layout.pool)
        return {
            "backend": self.kind,
            "path": str(self.layout.pool),
            "size_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize,
            "quota_enabled": False,
            "quota_mode": None,
            "quota_fallback": None,
            "stale_qgroups": 0,
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


class BtrfsStorage(QuotaGroupsMixin, Storage):
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
            self._wanted_quota()  # bad input stops here, before anything is made
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
            try:
                self._enable_quota()
            except Exception:
                run(["umount", str(pool)], check=False, what="unmount the half-made pool")
                img.unlink(missing_ok=True)
                raise

    def _enable_quota(self) -> None:
        """Turn quota on in a new, empty pool: simple quotas where the kernel has them.

        Simple quotas (kernel 6.7+) charge each extent to the subvolume that allocated it, so
        a commit's cost does not grow with the number of VEs sharing a template, as it does
        under full qgroups (docs/storage-design.md). They count only what is written after
        they are on, hence before any template is imported; an existing pool is never switched.
        POOL_QUOTA="full" in vz.conf asks for full qgroups (for comparison and old kernels).
        """
        pool = self.layout.pool
        wanted = self._wanted_quota()
        reason = None
        if wanted == "simple" and not btrfs.simple_quota_supported():
            reason = "this kernel has no btrfs simple quotas (6.7+)"
            log.warning("pool %s: %s: using full qgroups, which slow every create as VEs add up", pool, reason)
        if wanted == "simple" and reason is None:
            try:
                btrfs.quota_ctl(pool, btrfs.QUOTA_CTL_ENABLE_SIMPLE)
            except OSError as e:
                raise CommandFailed(f"enable simple quotas on the pool: {e.strerror or e}") from e
        else:
            run(["btrfs", "quota", "enable", str(pool)], what="enable quota on the pool")
            # Enabling starts a rescan, and until it ends the qgroup data reads as inconsistent.
            run(["btrfs", "quota", "rescan", "-W", str(pool)], what="wait for the first qgroup rescan")
        record = self._read_record()
        record.update(quota_mode_chosen=accounting.quota_state(pool)["mode"], quota_fallback=reason)
        self._write_record(record)

    def _wanted_quota(self) -> str:
        wanted = self.layout.settings.get("POOL_QUOTA", "simple")
        if wanted not in ("simple", "full"):
            raise InvalidInput(f"POOL_QUOTA={wanted!r} in vz.conf: use simple or full")
        return wanted

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
        self.clean_stale_qgroups()
        run(["btrfs", "-q", "subvolume", "create", str(path)], what=f"create subvolume {path.name}")

    def clone(self, src: Path, dst: Path, readonly: bool = False) -> None:
        self.clean_stale_qgroups()
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
        gone = [sid] if (sid := accounting.subvolume_id(path)) is not None else []
        try:
            run(["btrfs", "-q", "subvolume", "delete", str(path)], what=f"delete subvolume {path.name}")
            self._remember_stale(gone)
            return
        except CommandFailed:
            nested = self._nested_subvolumes(path)
            if not nested:
                raise
        # The VE's root made subvolumes of its own inside: delete those first, deepest first.
        for sub in sorted(nested, key=lambda p: -len(p.parts)):
            self.set_readonly(sub, False)
            sub_id = accounting.subvolume_id(sub)
            run(["btrfs", "-q", "subvolume", "delete", str(sub)], what=f"delete subvolume {sub}")
            self._remember_stale([sub_id] if sub_id is not None else [])
        run(["btrfs", "-q", "subvolume", "delete", str(path)], what=f"delete subvolume {path.name}")
        self._remember_stale(gone)

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
            quota_mode=state["mode"],
            quota_fallback=record.get("quota_fallback"),
            stale_qgroups=len(self._read_stale()),
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

    # --- disk space and quota (qgroups) ------------------------------------------------------
    def quota_on(self) -> bool:
        return accounting.qgroups_dir(self.layout.pool) is not None

    def quota(self, path: Path) -> tuple[int | None, int | None]:
        return accounting.disk_usage(accounting.qgroups_dir(self.layout.pool), path)

    def set_quota(self, path: Path, limit: int | None) -> None:
        if not self.quota_on():
            raise Unsupported(f"quota is not enabled on the pool {self.layout.pool}: "
                              f"run 'btrfs quota enable {self.layout.pool}' first")
        if not self.is_subvolume(path):  # the ioctl would limit the subvolume holding it instead
            raise InvalidInput(f"{path} is not a subvolume: it has no disk quota of its own")
        try:
            btrfs.qgroup_limit(path, limit or None)
        except (OSError, ValueError) as e:
            why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
            raise CommandFailed(f"set the disk quota of {path}: {why}") from e

    def quota_mode(self) -> str | None:
        return accounting.quota_state(self.layout.pool)["mode"]

    def sync(self, path: Path | None = None) -> None:
        run(["btrfs", "filesystem", "sync", str(path or self.layout.pool)], what="sync the pool")

    def usage(self, path: Path) -> int | None:
        """Bytes referenced by the subvolume (from its qgroup), or None when unknown."""
        space = self.space(path)
        return space[0] if space else None

    def space(self, path: Path) -> tuple[int, int] | None:
        if self.quota_mode() == "squota":
            # A simple quota counts what a subvolume allocated, not what its files take: a
            # snapshot's own qgroup reads ~0. Ask the extents instead (one walk of the tree).
            return self._du(path)
        try:
            out = run(["btrfs", "qgroup", "show", "-f", "--raw", str(path)], what="read qgroup").stdout
        except CommandFailed:
            return None
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("0/") and parts[1].isdigit():
                return int(parts[1]), int(parts[2])
        return None

    @staticmethod
    def _du(path: Path) -> tuple[int, int] | None:
        """(bytes its files take, bytes only it holds) from ``btrfs filesystem du``, None if unknown."""
        proc = run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)], check=False, what="measure a volume")
        parts = proc.stdout.splitlines()[-1].split() if proc.returncode == 0 and proc.stdout.strip() else []
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
        return None

    def full_copy(self, src: Path, dst: Path) -> None:
        """btrfs send | btrfs receive: a copy with blocks of its own, made writable."""
        stage = dst.with_name(dst.name + ".recv")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=0o700)
        received = stage / src.name
        try:
            pipe(["btrfs", "send", "-q", str(src)], ["btrfs", "receive", "-q", str(stage)],
                 what="full copy with btrfs send/receive")
            # A received subvolume is read-only and marked as received; -f makes it a plain writable one.
            run(["btrfs", "property", "set", "-f", "-ts", str(received), "ro", "false"],
                what="make the copy writable")
            os.rename(received, dst)
        except BaseException:
            if received.exists():
                with contextlib.suppress(CommandFailed):
                    run(["btrfs", "property", "set", "-f", "-ts", str(received), "ro", "false"])
                self.delete(received)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def block_devices(self) -> list[str]:
        fsid = accounting.btrfs_fsid(self.layout.pool)
        devdir = Path("/sys/fs/btrfs") / str(fsid) / "devices"
        if fsid is None or not devdir.is_dir():
            return []
        return sorted({d for p in devdir.iterdir() if (d := _whole_disk(p))})


def pipe(cmd1: list[str], cmd2: list[str], what: str) -> None:
    """Run ``cmd1 | cmd2``; raise CommandFailed naming ``what`` with the failing side's errors."""
    with tempfile.TemporaryFile() as e1, tempfile.TemporaryFile() as e2:
        p1 = subprocess.Popen(cmd1, stdout=subprocess.PIPE, stderr=e1)
        p1_out = p1.stdout
        assert p1_out is not None, "stdout=PIPE"
        p2 = subprocess.Popen(cmd2, stdin=p1_out, stderr=e2)
        p1_out.close()
        rc2, rc1 = p2.wait(), p1.wait()
        for rc, f, cmd in ((rc1, e1, cmd1), (rc2, e2, cmd2)):
            if rc != 0:
                f.seek(0)
                err = " ".join(f.read().decode(errors="replace").split())[-300:]
                raise CommandFailed(f"{what}: {cmd[0]} {cmd[1]} failed: {err or f'exit status {rc}'}")


def _whole_disk(sysdir: Path) -> str | None:
    """major:minor of the block device at ``sysdir``, or of its disk if it is a partition."""
    try:
        sysdir = sysdir.resolve()
        if (sysdir / "partition").exists():
            sysdir = sysdir.parent
        return (sysdir / "dev").read_text().strip()
    except OSError:
        return None


def open_storage(layout: Layout) -> Storage:
    if layout.storage == "dir":
        return DirStorage(layout)
    return BtrfsStorage(layout, loop=layout.storage == "btrfs-loop")
