"""Rescue mode: boot a VE into a fresh rescue system with the VE's own disk at /mnt (``vzctl rescue``).

For a customer whose VE no longer boots (a removed /sbin/init, a broken fstab or PAM), as hosting
panels offer it (Virtualizor's and SolusVM's rescue mode). The VE is stopped and booted again from a
temporary root, a writable snapshot of a rescue template (``RESCUE_TEMPLATE``, default
debian-12-sysv: small, with sshd), made personal from the host: the VE's host name, name servers,
root's authorized_keys and password hash (read from the VE's disk without following its links), a
machine-id and SSH host keys of its own. It is the same LXC container with the same config, so it
keeps the VE's addresses, port forwards, firewall, limits and host id range; the VE's own root is
mounted id-mapped to that range and bound at /mnt, so its files show with their owners and the
rescue system's root reaches nothing but this VE's files. ``vzctl rescue CTID --leave`` stops it and
removes the temporary root; the VE stays stopped, or boots normally with ``--start``.

Where it lives: the temporary root is the subvolume ``<pool>/rescue/<ctid>`` (with a disk quota of
its own, ``RESCUE_DISKSPACE``), the state a marker ``<root>/rescue/<ctid>.json``; while the rescue
system runs the rescue root is mounted at ``<root>/mnt/<ctid>/root`` (where the VE's root is mounted
otherwise) and the VE's root at ``<root>/mnt/<ctid>/disk``. The engine asks this module at four
points: which root to mount (``Engine.prepare_root``), which template's init to drive
(``Engine._spec``), which operations to refuse while in rescue (``Engine._lock``: start, snapshot,
backup, reinstall, suspend, ...; destroy removes the rescue root too), and the status "rescue".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import guest, idmount, rootfs, sshkeys, validate
from .errors import InvalidInput, NotFound, StateError, VZError
from .features import Feature
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback

if TYPE_CHECKING:
    from .engine import Engine, VEInfo
    from .layout import Layout
    from .veconf import VEConfig

DEFAULT_TEMPLATE = "debian-12-sysv"
DEFAULT_DISKSPACE = "2G"  # what the rescue system itself may write (the VE's disk at /mnt keeps its own quota)
# Operations refused while a VE is in rescue (the names Engine._lock is given): they would boot the VE's
# own system, or copy, replace or checkpoint a disk the rescue system is using.
REFUSED = {
    "start": "start it", "restart": "restart it", "snapshot": "take a snapshot",
    "snapshot-switch": "roll it back to a snapshot", "backup": "back it up", "reinstall": "reinstall it",
    "suspend": "suspend it", "resume": "resume it", "save as template": "save it as a template",
    "identity": "give it a new identity", "restore": "restore a backup over it", "clone": "clone it",
}
# A password hash from the VE's /etc/shadow, as crypt(3) writes them (or a locked/empty field).
_HASH = re.compile(r"[A-Za-z0-9./$*!=+-]{0,512}")




# --- where things are --------------------------------------------------------------------------------

def rescue_root(layout: Layout, ctid: int) -> Path:
    """The VE's temporary rescue root (a subvolume of the pool)."""
    return layout.pool / "rescue" / str(ctid)


def disk_mount(layout: Layout, ctid: int) -> Path:
    """Where the VE's own root is mounted id-mapped while its rescue system runs (bound at /mnt inside)."""
    return layout.mntdir / str(ctid) / "disk"


def _marker(layout: Layout, ctid: int) -> Path:
    return layout.root / "rescue" / f"{ctid}.json"


def state(layout: Layout, ctid: int) -> dict | None:
    """The VE's rescue state ({"template", "since"}), or None when it is not in rescue."""
    try:
        data = json.loads(_marker(layout, ctid).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("template"), str) else None


def is_active(eng: Engine, ctid: int) -> bool:
    return _marker(eng.layout, ctid).is_file()


def template_of(eng: Engine, ctid: int) -> str | None:
    """The rescue template VE ctid boots while in rescue, None when it is not in rescue."""
    s = state(eng.layout, ctid)
    return s["template"] if s else None


def default_template(layout: Layout) -> str:
    """The node's rescue template: $VZ_RESCUE_TEMPLATE, RESCUE_TEMPLATE in vz.conf, else debian-12-sysv."""
    return os.environ.get("VZ_RESCUE_TEMPLATE") or layout.settings.get("RESCUE_TEMPLATE") or DEFAULT_TEMPLATE


def _diskspace(layout: Layout) -> int | None:
    value = os.environ.get("VZ_RESCUE_DISKSPACE") or layout.settings.get("RESCUE_DISKSPACE") or DEFAULT_DISKSPACE
    return None if value in ("unlimited", "none") else validate.size(value, what="RESCUE_DISKSPACE")


# --- the engine's hooks ----------------------------------------------------------------------------------

def check_operation(eng: Engine, ctid: int, operation: str) -> None:
    """Refuse ``operation`` (a lock name) on a VE in rescue, saying how to leave rescue."""
    if operation in REFUSED and is_active(eng, ctid):
        raise StateError(f"VE {ctid} is in rescue mode: leave it first (vzctl rescue {ctid} --leave), "
                         f"then {REFUSED[operation]}")


def mount_roots(eng: Engine, ctid: int, target: Path, host: int) -> None:
    """Mount the rescue root at ``target`` and the VE's own root at its disk mount, both id-mapped to the
    VE's host range ``host`` (Engine.prepare_root, in rescue); on failure nothing stays mounted."""
    base, size = eng.layout.idmap
    root = rescue_root(eng.layout, ctid)
    if not root.is_dir():
        raise NotFound(f"VE {ctid} is in rescue mode but its rescue root {root} is missing: "
                       f"leave rescue (vzctl rescue {ctid} --leave) and enter it again")
    disk = disk_mount(eng.layout, ctid)
    disk.mkdir(mode=0o755)
    try:
        idmount.mount_idmapped(eng.layout.private(ctid), disk, outer=base, inner=host, size=size)
        idmount.mount_idmapped(root, target, outer=base, inner=host, size=size)
    except BaseException:
        idmount.unmount(disk)
        with contextlib.suppress(OSError):
            disk.rmdir()
        raise


class RescueFeature(Feature):
    """The rescue state over a VE's life: its /mnt in the LXC config, its status, its removal."""

    name = "rescue"

    def lxc_config(self, conf: VEConfig) -> list[str]:
        if not is_active(self.engine, conf.ctid):
            return []
        # LXC makes the mount inside the container, refusing a target that leaves its root.
        return [f"lxc.mount.entry = {disk_mount(self.engine.layout, conf.ctid)} mnt none bind,create=dir 0 0"]

    def info(self, conf: VEConfig, running: bool) -> dict:
        s = state(self.engine.layout, conf.ctid)
        return {"rescue": {**s, "running": running}} if s else {}

    def destroy(self, conf: VEConfig) -> None:
        with contextlib.suppress(VZError):  # purge calls this with the VE's mounts still there
            self.engine._drop_root_mount(conf.ctid)
        _remove(self.engine, conf.ctid)

    def purge(self) -> None:
        top = self.engine.layout.pool / "rescue"
        if top.is_dir():
            for vol in top.iterdir():
                with contextlib.suppress(VZError):
                    self.engine.storage.delete(vol)
        shutil.rmtree(self.engine.layout.root / "rescue", ignore_errors=True)


# --- enter and leave -------------------------------------------------------------------------------------

def enter(eng: Engine, ctid, template: str | None = None, wait_boot: bool = False,
          progress: Progress = _quiet) -> VEInfo:
    """Stop VE ctid if it runs and boot it into a rescue system with its own root at /mnt.

    A VE in rescue whose rescue system was shut down (from inside, or by vzctl stop) boots it again.
    Every step is undone if a later one fails: the VE is as it was (running again if it ran).
    """
    conf = eng.config(ctid)
    ctid = conf.ctid
    name = validate.template_name(template or default_template(eng.layout))
    spec = eng.templates.spec(name)  # an unknown template fails here, before any change
    if spec.init == "systemd":
        raise InvalidInput(f"template {name} boots systemd, which cannot run as a rescue system here "
                           "(its VE may be a systemd one); use a sysvinit or BusyBox template such as "
                           f"{DEFAULT_TEMPLATE}")
    with eng._lock(ctid, "rescue"):
        current = template_of(eng, ctid)
        if current is not None:
            if eng.is_running(ctid):
                raise StateError(f"VE {ctid} is already in rescue mode (template {current}); "
                                 f"vzctl rescue {ctid} --leave ends it")
            if template and name != current:
                raise StateError(f"VE {ctid} is in rescue mode with template {current}; leave it first "
                                 f"(vzctl rescue {ctid} --leave) to use {name}")
            progress(10, f"booting the rescue system of VE {ctid} again")
            eng._start(conf, progress)
        else:
            if eng.is_suspended(ctid):
                raise StateError(f"VE {ctid} is suspended: its saved processes would be lost; resume it "
                                 f"(vzctl resume {ctid}), then enter rescue")
            _enter(eng, conf, name, progress)
    if wait_boot:
        progress(80, "waiting for the rescue system to finish booting")
        eng.wait_booted(ctid)
    progress(100, f"VE {ctid} is in rescue mode: its own root is at /mnt")
    return eng.status(ctid)


def _enter(eng: Engine, conf: VEConfig, name: str, progress: Progress) -> None:
    ctid = conf.ctid
    tpl_root = eng.templates.ensure(name, progress=lambda p, m: progress(5 + p // 10, m))
    root = rescue_root(eng.layout, ctid)
    with Rollback() as rb:
        if eng.is_running(ctid):
            progress(20, f"stopping VE {ctid}")
            eng._stop(conf, None, False, progress)
            rb.add("start the VE again", lambda: eng._start(conf, _quiet))
        progress(40, f"making a rescue root from template {name}")
        _remove(eng, ctid)  # a rescue root left by a crash (no marker: not in use)
        root.parent.mkdir(mode=0o711, exist_ok=True)
        eng.storage.clone(tpl_root, root)
        rb.add("remove the rescue root", lambda: eng.storage.delete(root))
        _limit_disk(eng, root)
        _personalise(eng, conf, root, progress)
        eng._fail_point("rescue:before-marker")
        marker = _marker(eng.layout, ctid)
        marker.parent.mkdir(mode=0o700, exist_ok=True)
        _write_atomic(marker, json.dumps({"template": name, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        rb.add("leave rescue mode", lambda: marker.unlink(missing_ok=True))
        progress(60, "booting the rescue system")
        eng._start(conf, progress)  # cleans up after itself when it fails
        rb.add("stop the rescue system", lambda: _kill(eng, conf))
        eng._fail_point("rescue:after-start")
        rb.commit()


def leave(eng: Engine, ctid, start: bool = False, wait_boot: bool = False,
          progress: Progress = _quiet) -> VEInfo:
    """Stop VE ctid's rescue system and remove its rescue root; boot the VE's own system with ``start``."""
    conf = eng.config(ctid)
    ctid = conf.ctid
    with eng._lock(ctid, "rescue-leave"):
        if not is_active(eng, ctid):
            raise StateError(f"VE {ctid} is not in rescue mode")
        if eng.is_running(ctid):
            progress(10, "stopping the rescue system")
            eng._stop(conf, None, False, progress)
        else:
            eng._drop_root_mount(ctid)  # left by a shutdown from inside the rescue system
        eng._fail_point("rescue:leave")
        progress(40, "removing the rescue root")
        _remove(eng, ctid)
        eng._write_lxc_config(conf)  # the VE's own again (a reboot from inside boots that too)
        if start:
            try:
                eng._start(conf, lambda p, m: progress(50 + p // 2, m))
            except VZError as e:
                raise type(e)(f"VE {ctid} left rescue mode but did not start: {e.message}") from e
    if start and wait_boot:
        eng.wait_booted(ctid)
    progress(100, f"VE {ctid} left rescue mode" + (" and is running" if start else "; it is stopped"))
    return eng.status(ctid)


# --- steps -----------------------------------------------------------------------------------------------

def _remove(eng: Engine, ctid: int) -> None:
    """Remove VE ctid's rescue root, then its marker (so a failure half-way leaves it in rescue, to retry)."""
    root = rescue_root(eng.layout, ctid)
    if root.exists() or root.is_symlink():
        eng.storage.delete(root)
    _marker(eng.layout, ctid).unlink(missing_ok=True)


def _kill(eng: Engine, conf: VEConfig) -> None:
    with contextlib.suppress(VZError):
        eng.lxc.stop(conf.ctid, timeout=0, kill=True)
    eng._after_stop(conf)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _limit_disk(eng: Engine, root: Path) -> None:
    """Give the rescue root a disk quota of its own: its writes are outside the VE's subvolume and quota."""
    limit = _diskspace(eng.layout)
    if limit and eng.storage.can_quota and eng.storage.quota_on():
        eng.storage.set_quota(root, limit)


def _personalise(eng: Engine, conf: VEConfig, root: Path, progress: Progress) -> None:
    """Make the rescue root the VE's: its host name, name servers, root's keys and password; fresh host keys.

    What is read from the VE's disk is the customer's and untrusted: read without following links,
    regular files only, capped; a file that cannot be read so is left out, with a word in the progress.
    """
    hostname = conf.hostname or f"ve{conf.ctid}"
    base = eng._base_uid()
    private = eng.layout.private(conf.ctid)
    guest.set_identity(root, hostname, base)
    guest.write_hostname(root, hostname, base)
    if conf.get_list("NAMESERVER"):
        guest.write_resolv(root, conf.get_list("NAMESERVER"), conf.get("SEARCHDOMAIN"), base)
    else:
        copied = _read_ve(private, "etc/resolv.conf", 64 << 10, progress)
        if copied is not None:
            rootfs.write_file(root, "etc/resolv.conf", copied, uid=base, gid=base)
    keys = _read_ve(private, "root/.ssh/authorized_keys", sshkeys.MAX_KEYS * sshkeys.MAX_KEY_LINE, progress)
    if keys:
        rootfs.write_file(root, "root/.ssh/authorized_keys", keys, mode=0o600, uid=base, gid=base)
        sshkeys._chmod_dir(root, "root/.ssh", 0o700)
    password = _root_hash(_read_ve(private, "etc/shadow", 1 << 20, progress) or b"")
    if password:
        _set_root_hash(root, password, base)


def _read_ve(private: Path, rel: str, limit: int, progress: Progress) -> bytes | None:
    try:
        return rootfs.read_file(private, rel, limit=limit)
    except rootfs.UnsafePath as e:
        progress(50, f"left out of the rescue system: {e.message}")
        return None


def _root_hash(shadow: bytes) -> str | None:
    """root's password hash from a VE's /etc/shadow, if it is one (a locked or empty one is not copied)."""
    for line in shadow.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1 and _HASH.fullmatch(fields[1]) and fields[1].startswith("$"):
            return fields[1]
    return None


def _set_root_hash(root: Path, hashed: str, base: int) -> None:
    shadow = rootfs.read_file(root, "etc/shadow") or b""
    lines = shadow.decode().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = hashed
            lines[i] = ":".join(fields)
    owner = rootfs.file_owner(root, "etc/shadow")
    uid, gid, mode = owner if owner else (base, base, 0o640)
    rootfs.write_file(root, "etc/shadow", "\n".join(lines) + "\n", mode=mode, uid=uid, gid=gid)
