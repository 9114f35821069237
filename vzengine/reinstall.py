"""Reinstall (issue 5): a fresh root from a template for a VE that keeps its id, config, addresses,
limits and identity; the old root stays as a snapshot (on btrfs) and comes back if any step fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import guest, images, rootfs, validate
from .errors import InvalidInput
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .roots import stage, swap_root
from .run import run
from .snapshots import SnapshotInfo, snap_path, write_meta
from .veconf import VEConfig

if TYPE_CHECKING:
    from .engine import Engine, VEInfo


def _keep_path(value: str) -> str:
    """A path inside the VE to carry over on reinstall, as 'a/b' (no '..', no empty parts)."""
    parts = [p for p in str(value).strip().strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or any("\0" in p for p in parts):
        raise InvalidInput(f"invalid path to keep {value!r}: give a directory inside the VE, like home or root")
    return "/".join(parts)


def _real_dir(root: Path, rel: str) -> Path | None:
    """root/rel when every component below ``root`` is a real directory (no symlink), else None."""
    path = root
    for part in rel.split("/"):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"/{rel} in the VE is not a plain directory (a symlink or a file): "
                               "it cannot be kept")
    return path


def _carry_dir(eng: Engine, old_root: Path, new_root: Path, rel: str) -> bool:
    src = _real_dir(old_root, rel)
    if src is None:
        return False
    parent_rel, _, leaf = rel.rpartition("/")
    parent = new_root
    base = eng._base_uid()
    for part in parent_rel.split("/") if parent_rel else []:
        parent = parent / part
        if os.path.islink(parent) or (parent.exists() and not parent.is_dir()):
            raise InvalidInput(f"/{parent_rel} in the new template is not a plain directory: "
                               f"/{rel} cannot be kept")
        if not parent.exists():
            parent.mkdir(mode=0o755)
            os.chown(parent, base, base)
    dest = parent / leaf
    if os.path.islink(dest) or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    run(["cp", "-a", "--reflink=auto", str(src), str(parent) + "/"], what=f"keep /{rel}")
    return True


def _carry_identity(eng: Engine, conf: VEConfig, old_root: Path, new_root: Path) -> None:
    """Give the reinstalled root the VE's identity: hostname, machine-id, SSH host keys, root password."""
    base = eng._base_uid()
    hostname = conf.hostname or f"ve{conf.ctid}"
    guest.set_identity(new_root, hostname, base)  # fresh ones first, for whatever the old root lacks
    guest.write_hostname(new_root, hostname, base)
    with contextlib.suppress(rootfs.UnsafePath):
        mid = rootfs.read_file(old_root, "etc/machine-id")
        if mid and mid.strip():
            rootfs.write_file(new_root, "etc/machine-id", mid, mode=0o444, uid=base, gid=base)
    if rootfs.file_owner(new_root, "etc/ssh") is not None:
        for kind in ("ed25519", "ecdsa", "rsa"):
            for suffix, mode in (("", 0o600), (".pub", 0o644)):
                rel = f"etc/ssh/ssh_host_{kind}_key{suffix}"
                with contextlib.suppress(rootfs.UnsafePath):
                    data = rootfs.read_file(old_root, rel)
                    if data:
                        rootfs.write_file(new_root, rel, data, mode=mode, uid=base, gid=base)
    if conf.get_list("NAMESERVER"):
        guest.write_resolv(new_root, conf.get_list("NAMESERVER"), conf.get("SEARCHDOMAIN"), base)
    with contextlib.suppress(rootfs.UnsafePath):
        _carry_root_password(eng, old_root, new_root)


def _carry_root_password(eng: Engine, old_root: Path, new_root: Path) -> None:
    old = rootfs.read_file(old_root, "etc/shadow")
    new = rootfs.read_file(new_root, "etc/shadow")
    if not old or not new:
        return
    root_line = next((ln for ln in old.decode(errors="replace").splitlines() if ln.startswith("root:")), None)
    if root_line is None:
        return
    lines = [root_line if ln.startswith("root:") else ln for ln in new.decode(errors="replace").splitlines()]
    guest.write_shadow(new_root, lines, eng._base_uid())


def reinstall(eng: Engine, ctid, ostemplate: str | None = None, keep: list[str] | tuple[str, ...] = (),
              snapshot: bool = True, progress: Progress = _quiet) -> VEInfo:
    """Give a VE a fresh root from a template, keeping its id, config, addresses, limits and identity.

    ``keep`` lists directories carried over from the old root (e.g. home, root). On btrfs the old
    root is kept as snapshot ``before-reinstall-<time>`` (unless ``snapshot`` is False); a
    failure at any step puts it back. A running VE is stopped and started again.
    """
    conf = eng.config(ctid)
    ctid = conf.ctid
    template = validate.template_name(ostemplate or conf.ostemplate)
    eng.templates.spec(template)  # unknown template: fails here, before any change
    keep = [_keep_path(k) for k in keep]
    for rel in keep:  # a symlink or a file where a kept directory should be: refuse before any change
        _real_dir(eng.layout.private(ctid), rel)
    eng.ensure_ready()
    snap_name = f"before-reinstall-{time.strftime('%Y%m%d-%H%M%S')}"
    with eng._lock(ctid, "reinstall"), Rollback() as rb:
        tpl_root = eng.templates.ensure(template, progress=lambda p, m: progress(p // 5, m))
        private = eng.layout.private(ctid)
        new = stage(eng, ctid, "reinstall")
        progress(25, f"making a fresh root from template {template}")
        eng.storage.clone(tpl_root, new)
        rb.add("remove the fresh root", lambda: eng.storage.delete(new))
        running = eng.is_running(ctid)
        if running:
            progress(35, f"VE {ctid} is running: stopping it to reinstall")
            eng._stop(conf, None, False, lambda p, m: progress(35 + p // 10, m))
            rb.add("start the VE again on its old root", lambda: eng._start(conf, _quiet))
        _carry_identity(eng, conf, private, new)
        for rel in keep:
            progress(55, f"keeping /{rel}")
            if not _carry_dir(eng, private, new, rel):
                progress(55, f"the VE has no /{rel}: nothing to keep there")
        old = swap_root(eng, ctid, new, rb)
        old_text, old_template = conf.path.read_text(), conf.ostemplate
        conf.set("OSTEMPLATE", template)
        conf.save()

        def put_back_config() -> None:
            conf.path.write_text(old_text)
            eng._write_lxc_config(VEConfig.load(conf.path, ctid))

        rb.add("put the old config back", put_back_config)
        eng._write_lxc_config(conf)
        eng._fail_point("reinstall:after-swap")
        if running:
            progress(80, f"starting VE {ctid} again")
            eng._start(conf, lambda p, m: progress(80 + p // 6, m))
        rb.commit()
        kept_as = None
        if snapshot and eng.storage.can_snapshot:
            path = snap_path(eng, ctid, snap_name)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(old, path)
            eng.storage.set_readonly(path, True)
            write_meta(eng, ctid, SnapshotInfo(
                name=snap_name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                description=f"the root before reinstalling from {template}", ve_state="stopped",
                ostemplate=old_template))
            kept_as = snap_name
        else:
            eng.storage.delete(old)
        if images.discard(eng, ctid):
            progress(95, f"VE {ctid} was suspended: its saved processes belonged to the old system and were "
                         "discarded")
    progress(100, f"VE {ctid} reinstalled from {template}" +
             (f"; its old root is snapshot {kept_as} (vzctl snapshot-delete {ctid} --name {kept_as} frees it)"
              if kept_as else ""))
    return eng._info(conf)
