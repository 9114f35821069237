"""The task worker's handlers of a VE's snapshots and backups (queued by vzpanel.ves.storage), and the reconcile
job's part for them. They reach the node's engine through its agent, as every handler does."""

import datetime
import logging

from django.db import transaction
from django.utils import timezone

from vzpanel.agent.errors import AgentError
from vzpanel.tasks import actions
from vzpanel.tasks.errors import TaskFailed
from vzpanel.tasks.models import Task

from .models import VE, Backup, Snapshot
from .storage import queue_daily_backups, restoring_from
from .sync import engine_limits, mark_destroyed, save_info

log = logging.getLogger(__name__)

SNAPSHOT_TASKS = (Task.Action.SNAPSHOT, Task.Action.SNAPSHOT_ROLLBACK, Task.Action.SNAPSHOT_DELETE,
                  Task.Action.RESTORE)


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


def after_reconcile(node, eng, reported: dict) -> dict:
    """The reconcile job's part for snapshots and backups: re-read the snapshots of VEs whose count on the
    node differs from the panel's (taken or deleted with vzctl, a classroom reset), and queue daily backups."""
    synced = 0
    counts = dict(VE.objects.live().filter(node=node, ctid__in=list(reported)).values_list("ctid", "pk"))
    have = {}
    for ve_id in Snapshot.objects.filter(ve_id__in=counts.values()).values_list("ve_id", flat=True):
        have[ve_id] = have.get(ve_id, 0) + 1
    busy = set(Task.objects.active().filter(node=node).values_list("ve_id", flat=True))
    for ctid, pk in counts.items():
        on_node = reported[ctid].extra.get("snapshots", 0)
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


HANDLERS = {
    Task.Action.SNAPSHOT: do_snapshot,
    Task.Action.SNAPSHOT_ROLLBACK: do_snapshot_rollback,
    Task.Action.SNAPSHOT_DELETE: do_snapshot_delete,
    Task.Action.BACKUP: do_backup,
    Task.Action.RESTORE: do_restore,
    Task.Action.RESTORE_NEW: do_restore_new,
    Task.Action.BACKUP_DELETE: do_backup_delete,
}
for _action, _handler in HANDLERS.items():
    actions.register(_action, _handler, creates_ve=_action == Task.Action.RESTORE_NEW)
