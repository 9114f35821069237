"""A VE's own host id range (idmap.py) and its root mounted id-mapped to it (idmount.py).

Files of every VE are stored as IDMAP_BASE+k; each VE runs in a host-wide unique range H.. of its
own, and its root is mounted id-mapped at <root>/mnt/<ctid>/root so that they show as H+k there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import idmap, idmount, rescue
from .errors import StateError, VZError

if TYPE_CHECKING:
    from .engine import Engine
    from .veconf import VEConfig


def host_range(conf: VEConfig) -> int | None:
    """First host uid of the VE's own id range (its root on the host), None until it has one."""
    value = conf.get("IDMAP")
    return int(value) if value.isdigit() and len(value) <= 10 else None


def claim_range(eng: Engine, conf: VEConfig) -> int:
    """Make sure the VE holds a host-wide unique id range and its config names it; return its base."""
    base, size = eng.layout.idmap
    if idmap.overlaps_region(base, size) or size > idmap.RANGE_SIZE:
        raise StateError(f"IDMAP_BASE={base} IDMAP_SIZE={size} in vz.conf: VE files must be stored outside "
                         f"the VEs' own id ranges ({idmap.RANGE_FIRST} on) and span at most {idmap.RANGE_SIZE}")
    held = idmap.claim(eng.layout.root, conf.ctid, host_range(conf))
    if held != host_range(conf):
        conf.set("IDMAP", held)
        if conf.path.exists():
            conf.save()
    return held


def prepare_root(eng: Engine, conf: VEConfig, resume: bool = False) -> Path | None:
    """Mount the VE's root id-mapped to its own range (replacing an earlier mount) before LXC starts or
    restores it: files stored as IDMAP_BASE+k show as H+k there. Return the mount point.

    ``resume``: CRIU restores the id map a VE was dumped with, so a resumed VE keeps the range its
    config names (refused if another VE holds it now), and one suspended before it had a range of
    its own resumes as it ran, on its plain root as IDMAP_BASE (None); its next start gives it one.
    """
    ctid = conf.ctid
    if resume:
        host = host_range(conf)
        if host is None:
            drop_root_mount(eng, ctid)
            return None
        if not idmap.claim_exact(eng.layout.root, ctid, host):
            raise StateError(f"VE {ctid} was suspended running as host ids {host}.., which another VE holds "
                             f"now: it cannot be resumed; vzctl start boots it afresh in a range of its own")
    else:
        host = claim_range(eng, conf)
    base, size = eng.layout.idmap
    target = eng.layout.ve_mount(ctid)
    drop_root_mount(eng, ctid)
    eng.layout.mntdir.mkdir(mode=0o711, exist_ok=True)
    os.chmod(eng.layout.mntdir, 0o711)
    # Only host root and the VE's own root (as whom LXC mounts the rootfs: gid H) get through,
    # and the VE's root cannot put anything there: root's directory, group H, mode 0710.
    target.parent.mkdir(mode=0o700)
    os.chown(target.parent, 0, host)
    os.chmod(target.parent, 0o710)
    target.mkdir(mode=0o755)
    try:
        if rescue.is_active(eng, ctid):  # the rescue system's root, with the VE's own for its /mnt
            rescue.mount_roots(eng, ctid, target, host)
        else:
            idmount.mount_idmapped(eng.layout.private(ctid), target, outer=base, inner=host, size=size)
    except BaseException:
        with contextlib.suppress(VZError):
            drop_root_mount(eng, ctid)
        raise
    return target


def drop_root_mount(eng: Engine, ctid: int) -> None:
    """Unmount the VE's id-mapped root and remove its directory (never anything below a mount)."""
    top = eng.layout.ve_mount(ctid).parent
    for point in idmount.mount_points(top):
        idmount.unmount(point)
    if idmount.mount_points(top):
        raise StateError(f"{top} is still mounted: unmount it by hand (umount -l) and try again")
    # Removed, not left empty: LXC must fail on a missing mount, never boot an empty directory.
    for d in (eng.layout.ve_mount(ctid), rescue.disk_mount(eng.layout, ctid), top):
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateError(f"cannot remove {d}, the VE's root mount point ({e.strerror}): "
                             "move what is in it away and try again") from None
