"""Storage backends for VE roots: a btrfs pool (loop image or existing directory) or plain dirs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from . import validate
from .errors import CommandFailed, InvalidInput, Unsupported
from .layout import Layout
from .run import run


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
