"""What each task action does: the task worker's handlers, which reach the node's engine through its agent.

These run in the task worker (the unprivileged web user, like the web server); every engine call is a request
to the node agent (vzpanel.agent), the one door to root, which validates it again.
"""

import datetime
import logging
import os

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from vzpanel.agent.client import RemoteEngine, connect
from vzpanel.agent.errors import AgentError, NotFound
from vzpanel.ves import hosting  # also connects its signal: a destroyed VE's addresses go back to the pool
from vzpanel.ves.models import VE, Backup, Snapshot

from . import actions
from .errors import TaskFailed
from .models import Task
from .queue import publish

log = logging.getLogger(__name__)


def engine(node_name: str) -> RemoteEngine:
    """Return the engine of the named node, reached through its agent."""
    return RemoteEngine(node_name, connect(settings.REDIS_URL))


def save_info(ve: VE, info) -> None:
    """Store what the engine reports about ve and tell its watchers."""
    changed = ve.apply_info(info)
    if changed:
        ve.save(update_fields=[*changed, "updated_at"])
    publish_ve(ve)


def publish_ve(ve: VE) -> None:
    publish(ve.group_name, "ve.update", {"ctid": ve.ctid, "status": ve.status})


def root_passwd(root_password):
    return [("root", root_password)] if root_password else None


def engine_limits(limits: dict) -> dict:
    """Turn a plan's limits, as stored on the VE, into the engine's resource parameters."""
    names = {"ram_mb": ("ram", "M"), "swap_mb": ("swap", "M"), "disk_gb": ("diskspace", "G"),
             "cpus": ("cpus", ""), "nproc": ("numproc", "")}
    out = {}
    for key, (param, unit) in names.items():
        if limits.get(key) not in (None, ""):
            out[param] = f"{limits[key]}{unit}"
    if "ram" not in out:
        out.pop("swap", None)  # swap is on top of a RAM limit
    if "cpus" in out:  # a plan is the same on every node; a node gives at most what it has
        out["cpus"] = str(min(int(limits["cpus"]), os.cpu_count() or 1))
    return out


def do_create(task, progress, eng, root_password=None):
    ve, params = task.ve, task.params
    info = eng.create(
        ve.ctid,
        params["ostemplate"],
        hostname=params.get("hostname") or None,
        userpasswd=root_passwd(root_password),
        progress=progress,
        **engine_limits(ve.limits or {}),
        **hosting.engine_net(params),
    )
    save_info(ve, info)
    if params.get("ssh_keys"):  # before the first start: sshd reads them as it starts
        eng.ssh_keys_set(ve.ctid, params["ssh_keys"], password_login=True)
    if params.get("start"):
        info = eng.start(ve.ctid, progress=progress)
        save_info(ve, info)
    return info.to_dict()


def do_start(task, progress, eng):
    """Start the VE; a suspended one is resumed with its processes (booted afresh only if that fails)."""
    ctid = task.ve.ctid
    if eng.is_suspended(ctid):
        try:
            eng.resume(ctid, progress=progress)
            return eng.status(ctid)
        except AgentError as exc:
            progress(50, f"VE {ctid} could not be resumed ({exc.message}); booting it afresh instead")
    return eng.start(ctid, progress=progress)


def do_stop(task, progress, eng):
    return eng.stop(task.ve.ctid, progress=progress)


def do_restart(task, progress, eng):
    return eng.restart(task.ve.ctid, progress=progress)


def do_reinstall(task, progress, eng, root_password=None):
    info = eng.reinstall(task.ve.ctid, ostemplate=task.params.get("ostemplate") or None, progress=progress)
    if root_password:
        info = eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)
    sync_snapshots(task.ve, eng)  # the engine keeps the old root as snapshot before-reinstall-<time>
    return info


def do_set_password(task, progress, eng, root_password=None):
    if not root_password:
        raise TaskFailed("No password was given.")
    return eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)


def do_set_hostname(task, progress, eng):
    return eng.set(task.ve.ctid, hostname=task.params["hostname"], progress=progress)


def do_set_limits(task, progress, eng):
    """Set the VE's limits live (all or none: the engine undoes a half-applied change); store them if taken."""
    ve, limits = task.ve, task.params.get("limits")
    if not isinstance(limits, dict) or not limits:
        raise TaskFailed("The task names no limits to set.")
    if eng.is_suspended(ve.ctid):
        raise TaskFailed(f"VE {ve.ctid} is suspended; its limits can be changed once it runs again.")
    params = engine_limits(limits)
    progress(10, "Setting " + ", ".join(f"{name} {value}" for name, value in params.items()))
    info = eng.set(ve.ctid, save=True, progress=progress, **params)  # refusals raise VZError: the task fails
    ve.limits = dict(limits)
    ve.save(update_fields=["limits", "updated_at"])
    return info


def do_destroy(task, progress, eng):
    ve = task.ve
    eng.destroy(ve.ctid, progress=progress)  # its snapshots go with it
    mark_destroyed(ve)
    ve.snapshots.all().delete()
    deleted = []
    if task.params.get("delete_backups"):
        for backup in ve.backups.kept():
            if in_use(backup, progress):
                continue
            remove_backup(eng, backup, "with its VE")
            deleted.append(backup.pk)
        if deleted:
            progress(100, f"Deleted {len(deleted)} backup(s) of VE {ve.ctid}")
    elif ve.backups.kept().exists():
        progress(100, f"Kept {ve.backups.kept().count()} backup(s) of VE {ve.ctid} (admins can restore or delete them)")
    return {"ctid": ve.ctid, "destroyed": True, "backups_deleted": deleted}


# --- snapshots and backups -------------------------------------------------------------------------------


def engine_time(value: str):
    """A time as the engine writes it (2026-01-02T03:04:05+0000), or None."""
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return None


def sync_snapshots(ve: VE, eng) -> list[str]:
    """Make ve's Snapshot rows what the engine lists (names, times, sizes); return the names."""
    snaps = eng.snapshot_list(ve.ctid)
    names = [info.name for info in snaps]
    with transaction.atomic():
        ve.snapshots.exclude(name__in=names).delete()
        for info in snaps:
            Snapshot.objects.update_or_create(ve=ve, name=info.name, defaults={
                "description": (info.description or "")[:500],
                "created_at": engine_time(info.created) or timezone.now(),
                "ve_state": info.ve_state or "",
                "size_bytes": info.referenced,
                "exclusive_bytes": info.exclusive,
            })
    return names


def do_snapshot(task, progress, eng):
    ve, name = task.ve, task.params["name"]
    eng.snapshot(ve.ctid, name, task.params.get("description", ""), progress=progress)
    sync_snapshots(ve, eng)
    return {"snapshot": name}


def do_snapshot_rollback(task, progress, eng):
    ve, name = task.ve, task.params["name"]
    info = eng.snapshot_switch(ve.ctid, name, progress=progress)  # stops and starts a running VE
    save_info(ve, info)
    sync_snapshots(ve, eng)
    return {"snapshot": name, **info.to_dict()}


def do_snapshot_delete(task, progress, eng):
    ve, name = task.ve, task.params["name"]
    eng.snapshot_delete(ve.ctid, name, progress=progress)
    sync_snapshots(ve, eng)
    return {"deleted": name}


def remove_backup(eng, backup: Backup, why: str) -> None:
    """Delete a backup's archive from its node (the agent finds it by file name) and mark its row deleted."""
    eng.backup_delete(backup.file_name)
    backup.deleted_at = timezone.now()
    backup.deleted_why = why[:200]
    backup.save(update_fields=["deleted_at", "deleted_why"])


def in_use(backup: Backup, progress) -> bool:
    """Whether a task is restoring backup as a new VE right now (its file stays; say so)."""
    from vzpanel.ves.services import restoring_from

    task = restoring_from(backup)
    if task is not None:
        progress(None, f"Kept backup {backup.pk} ({backup.file_name}): task {task.pk} is restoring it as a new VE")
    return task is not None


def rotate_backups(eng, ve: VE, progress) -> list[int]:
    """Remove ve's oldest backups beyond its owner's plan's max_backups (the newest one always stays)."""
    plan = ve.owner.plan if ve.owner_id and ve.owner is not None else None
    if plan is None:
        return []
    keep = max(plan.max_backups, 1)
    removed = []
    for old in ve.backups.kept().order_by("-created_at", "-id")[keep:]:
        if in_use(old, progress):
            continue
        remove_backup(eng, old, f"rotated out: plan {plan.name} keeps {keep}")
        removed.append(old.pk)
        progress(None, f"Removed the oldest backup ({old.file_name}, {old.created_at:%Y-%m-%d %H:%M}): "
                       f"plan {plan.name} keeps {keep} per VE")
    return removed


def do_backup(task, progress, eng):
    """Back the VE up (from a snapshot while it runs), verify the archive, record it, rotate the oldest out."""
    ve = task.ve
    written = eng.backup(ve.ctid, progress=progress)  # verified by the agent; one that fails is removed
    manifest = written.manifest or {}
    backup = Backup.objects.create(
        ve=ve, node=task.node, ctid=ve.ctid, path=written.path, size_bytes=written.size,
        files=manifest.get("files"), data_bytes=manifest.get("bytes"), sha256=manifest.get("sha256", ""),
        created_at=engine_time(manifest.get("created")) or timezone.now(), verified_at=timezone.now(),
        automatic=bool(task.params.get("automatic")), task=task,
    )
    rotated = rotate_backups(eng, ve, progress)
    return {"backup": backup.pk, "size": backup.size_bytes, "verified": True, "rotated": rotated}


def do_restore(task, progress, eng):
    """Put a backup of the VE back over it (stopped and started again if it runs), then its panel limits."""
    ve = task.ve
    backup = Backup.objects.kept().filter(pk=task.params.get("backup"), ve=ve).first()
    if backup is None:
        raise TaskFailed(f"Backup {task.params.get('backup')} of VE {ve.ctid} is gone.")
    if not eng.backup_exists(backup.file_name):
        raise TaskFailed(f"The file of backup {backup.pk} ({backup.file_name}) is no longer on node {task.node.name}.")
    info = eng.restore(backup.file_name, ve.ctid, force=True, progress=progress)
    Backup.objects.filter(pk=backup.pk).update(verified_at=timezone.now())  # a restore checks every checksum
    if ve.limits:  # the archive holds the config of its day; the panel's limits are the ones in effect
        try:
            info = eng.set(ve.ctid, save=True, **engine_limits(ve.limits))
        except AgentError as exc:
            progress(None, f"Restored, but the VE's limits could not be set again: {exc.message}")
    save_info(ve, info)
    sync_snapshots(ve, eng)
    return {"backup": backup.pk, **info.to_dict()}


def do_restore_new(task, progress, eng):
    """Restore a backup as a new VE: the task's VE, a row the web side made in state "creating".

    Under the backup's own CTID (a destroyed VE brought back) the VE keeps its host name, machine-id, SSH host
    keys and those of its addresses and port forwards nobody has taken since; under any other CTID it gets a
    host name, machine-id and SSH host keys of its own and as many addresses from the pool as the source had
    (the engine does not restore another id's addresses, MACs or port forwards). Then the owner's plan limits.
    Anything failing before the VE is complete removes it again (nothing stays behind); a failed start leaves
    it stopped.
    """
    ve, params = task.ve, task.params
    backup = Backup.objects.kept().filter(pk=params.get("backup")).select_related("ve").first()
    try:
        if backup is None:
            raise TaskFailed(f"Backup {params.get('backup')} was deleted meanwhile; nothing was restored.")
        if not eng.backup_exists(backup.file_name):
            raise TaskFailed(f"The file of backup {backup.pk} ({backup.file_name}) is no longer on node "
                             f"{task.node.name}; nothing was restored.")
        if eng.exists(ve.ctid):
            raise TaskFailed(f"Node {task.node.name} already has a VE {ve.ctid} that the panel does not list (made "
                             "outside it?); nothing was restored: choose another CTID.")
    except TaskFailed:
        mark_destroyed(ve)  # give the quota back; the engine's VE of that id, if any, is not ours
        raise
    made = False
    try:
        info = eng.restore(backup.file_name, ve.ctid, progress=lambda p, m: progress(p * 7 // 10, m))
        made = True
        Backup.objects.filter(pk=backup.pk).update(verified_at=timezone.now())  # a restore checks every checksum
        hostname = params.get("hostname") or f"ve{ve.ctid}"
        if ve.ctid != backup.ctid:
            progress(72, f"Giving VE {ve.ctid} its own identity: host name {hostname}, machine-id, SSH host keys")
            eng.new_identity(ve.ctid, hostname)
        info = eng.set(ve.ctid, hostname=hostname, save=True)
        info = give_addresses(eng, ve.ctid, info, params.get("addresses") or {}, progress)
        if ve.limits:  # the owner's plan, not the archive's config of its day
            progress(90, "Setting the limits of the owner's plan")
            try:
                info = eng.set(ve.ctid, save=True, **engine_limits(ve.limits))
            except AgentError as exc:
                raise TaskFailed(f"The restored VE does not fit its owner's plan ({exc.message}); it was removed "
                                 "again.") from None
    except BaseException:
        if made:
            try:
                eng.destroy(ve.ctid)
            except Exception:
                log.exception("could not remove the half-restored VE %s", ve.ctid)
        mark_destroyed(ve)
        raise
    save_info(ve, info)
    progress(95, f"VE {ve.ctid} restored from backup {backup.pk} of VE {backup.ctid}"
                 + (f", addresses {' '.join(info.ip_addresses)}" if info.ip_addresses else ", no addresses"))
    if params.get("start"):
        info = eng.start(ve.ctid, progress=progress)  # a failed start leaves it stopped (after_failure re-reads)
        save_info(ve, info)
    return {"backup": backup.pk, "source": backup.ctid, **info.to_dict()}


def give_addresses(eng, ctid: int, info, counts: dict, progress):
    """Give a restored VE its addresses: the ones it came back with if they are still free (claimed again through
    the engine's checks: other VEs, the host's routes), else, and for the rest, new ones from the pool: as many
    IPv4 and IPv6 addresses as counts says the source had."""
    kept = list(info.ip_addresses or [])
    if kept:  # restored under its own id: addresses and port forwards came back with the config
        forwards = eng.portfwd_list(ctid)
        try:
            info = eng.set(ctid, save=True, ipdel=["all"], ipadd=kept, portfwd_del=["all"], portfwd=forwards)
        except AgentError as exc:
            progress(None, f"Its old addresses cannot be taken back ({exc.message}): it gets new ones from the pool "
                           "(and no port forwards)")
            info = eng.set(ctid, save=True, ipdel=["all"], portfwd_del=["all"])
            kept = []
    have = {"4": sum(":" not in a for a in kept), "6": sum(":" in a for a in kept)}
    add = (["auto"] * max(0, int(counts.get("4") or 0) - have["4"])
           + ["auto6"] * max(0, int(counts.get("6") or 0) - have["6"]))
    if add:
        progress(85, f"Taking {len(add)} address(es) from the pool")
        try:
            info = eng.set(ctid, save=True, ipadd=add)
        except AgentError as exc:
            raise TaskFailed(f"The restored VE could not get addresses: {exc.message}; it was removed again.") from None
    return info


def do_backup_delete(task, progress, eng):
    backup = Backup.objects.kept().filter(pk=task.params.get("backup"), ve=task.ve).first()
    if backup is None:
        raise TaskFailed(f"Backup {task.params.get('backup')} was already deleted.")
    remove_backup(eng, backup, f"deleted by {task.user.get_username() if task.user else 'the system'}")
    progress(100, f"Backup {backup.pk} ({backup.file_name}) deleted")
    return {"deleted": backup.pk}


# --- hosting: addresses and SSH keys (vzpanel.ves.hosting queues these) ------------------------------------


def do_address_add(task, progress, eng):
    """Add the address the panel reserved (its IPAddress row) to the VE, live; the row goes if that fails."""
    from vzpanel.nodes.models import IPAddress

    ve, address = task.ve, task.params["address"]
    try:
        info = eng.set(ve.ctid, ipadd=[address], save=True, progress=progress)
    except BaseException:
        IPAddress.objects.filter(pk=task.params.get("row"), ve=ve).delete()
        raise
    progress(100, f"VE {ve.ctid} has address {address}")
    return info


def do_address_del(task, progress, eng):
    """Take an address off the VE (live), with the SSH port forward it carried; then free its row."""
    from vzpanel.nodes.models import IPAddress

    ve, address, port = task.ve, task.params["address"], task.params.get("ssh_port")
    params = {"ipdel": [address]}
    if port:
        params["portfwd_del"] = [f"tcp:{port}:22"]
    info = eng.set(ve.ctid, save=True, progress=progress, **params)
    for row in IPAddress.objects.filter(ve=ve, address=address):
        hosting.pools.reverse_dns_changed.send(IPAddress, address=row, name="")
        row.delete()
    progress(100, f"Address {address} removed from VE {ve.ctid}")
    return info


def do_ssh_keys(task, progress, eng):
    ve, p = task.ve, task.params
    result = eng.ssh_keys_set(ve.ctid, p.get("keys") or [], password_login=bool(p.get("password_login", True)))
    progress(100, f"{result.get('keys')} key(s) in root's authorized_keys; password log-in over SSH "
                  f"{'on' if result.get('password_login') else 'off'}"
                  + ("" if result.get("reloaded") or not result.get("sshd") else " (sshd reads it at its next start)"))
    return result


def do_set_firewall(task, progress, eng):
    """Replace the VE's firewall (policy and rules), live where it runs; the engine undoes a half-applied change."""
    policy, rules = task.params["policy"], list(task.params.get("rules") or [])
    progress(10, f"Setting policy {policy} and {len(rules)} rule(s)")
    info = eng.firewall_set(task.ve.ctid, policy, rules, progress=progress)
    progress(100, f"VE {task.ve.ctid}'s firewall: policy {policy}, {len(rules)} rule(s)")
    return info


# --- rescue mode (vzengine/rescue.py): the VE boots a rescue system with its own root at /mnt -------------


def do_rescue(task, progress, eng):
    """Boot the VE into the node's rescue system (stopping it first); the engine undoes a half-done entry."""
    return eng.rescue_enter(task.ve.ctid, progress=progress)


def do_rescue_leave(task, progress, eng):
    """Stop the rescue system, remove its temporary root and boot the VE's own system (params.start, default on)."""
    return eng.rescue_leave(task.ve.ctid, start=bool(task.params.get("start", True)), progress=progress)


HANDLERS = {
    Task.Action.CREATE: do_create,
    Task.Action.START: do_start,
    Task.Action.STOP: do_stop,
    Task.Action.RESTART: do_restart,
    Task.Action.REINSTALL: do_reinstall,
    Task.Action.SET_PASSWORD: do_set_password,
    Task.Action.SET_HOSTNAME: do_set_hostname,
    Task.Action.DESTROY: do_destroy,
    Task.Action.SET_LIMITS: do_set_limits,
    Task.Action.SNAPSHOT: do_snapshot,
    Task.Action.SNAPSHOT_ROLLBACK: do_snapshot_rollback,
    Task.Action.SNAPSHOT_DELETE: do_snapshot_delete,
    Task.Action.BACKUP: do_backup,
    Task.Action.RESTORE: do_restore,
    Task.Action.RESTORE_NEW: do_restore_new,
    Task.Action.BACKUP_DELETE: do_backup_delete,
    Task.Action.ADDRESS_ADD: do_address_add,
    Task.Action.ADDRESS_DEL: do_address_del,
    Task.Action.SSH_KEYS: do_ssh_keys,
    Task.Action.SET_FIREWALL: do_set_firewall,
}
for _action, _handler in HANDLERS.items():
    actions.register(_action, _handler, creates_ve=_action in (Task.Action.CREATE, Task.Action.RESTORE_NEW))
actions.register("rescue", do_rescue, label="boot into rescue")
actions.register("rescue_leave", do_rescue_leave, label="leave rescue")


SNAPSHOT_TASKS = (Task.Action.SNAPSHOT, Task.Action.SNAPSHOT_ROLLBACK, Task.Action.SNAPSHOT_DELETE,
                  Task.Action.RESTORE)


def mark_destroyed(ve: VE) -> None:
    ve.status = VE.Status.DESTROYED
    ve.destroyed_at = timezone.now()
    ve.save(update_fields=["status", "destroyed_at", "updated_at"])
    publish_ve(ve)


def after_failure(task: Task) -> None:
    """Bring the VE row in line with the engine after a failed action (best effort)."""
    ve = task.ve
    if ve is None or not ve.is_live:
        return
    try:
        eng = engine(task.node.name)
        try:
            save_info(ve, eng.status(ve.ctid))
            if task.action in SNAPSHOT_TASKS:  # e.g. a snapshot deleted outside the panel: show what is there
                sync_snapshots(ve, eng)
        except NotFound:
            if task.action in actions.CREATES_VE:
                mark_destroyed(ve)  # never built: give the quota back
            else:
                ve.status = VE.Status.MISSING
                ve.save(update_fields=["status", "updated_at"])
                publish_ve(ve)
    except Exception:
        log.warning("could not refresh VE %s after task %s", ve.ctid, task.pk, exc_info=True)


def after_reconcile(node, eng, reported: dict) -> dict:
    """The reconcile job's part for snapshots and backups: re-read the snapshots of VEs whose count on the
    node differs from the panel's (taken or deleted with vzctl, a classroom reset), and queue daily backups."""
    from vzpanel.ves.services import queue_daily_backups

    synced = 0
    counts = dict(VE.objects.live().filter(node=node, ctid__in=list(reported)).values_list("ctid", "pk"))
    have = {}
    for ve_id in Snapshot.objects.filter(ve_id__in=counts.values()).values_list("ve_id", flat=True):
        have[ve_id] = have.get(ve_id, 0) + 1
    busy = set(Task.objects.active().filter(node=node).values_list("ve_id", flat=True))
    for ctid, pk in counts.items():
        on_node = (getattr(reported[ctid], "extra", None) or {}).get("snapshots", 0)
        if pk in busy or on_node == have.get(pk, 0):
            continue
        try:
            sync_snapshots(VE.objects.get(pk=pk), eng)
            synced += 1
        except Exception:
            log.info("could not re-read the snapshots of VE %s", ctid, exc_info=True)
    try:
        queued = len(queue_daily_backups(node))
    except Exception:
        log.exception("queueing the daily backups of %s failed", node.name)
        queued = 0
    return {"snapshots_synced": synced, "daily_backups": queued}
