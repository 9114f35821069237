"""A VE's snapshots and backups: their input checked against the VE and its plan, and the daily backups."""

import re

from vzpanel.tasks.models import Task

from .errors import ActionRefused, InvalidRequest, NotFound, QuotaExceeded, ServiceError
from .limits import plan_of
from .models import VE, Backup

# The actions that work on a VE's snapshots and backups (their own pages and API calls).
SNAPSHOT_ACTIONS = (Task.Action.SNAPSHOT, Task.Action.SNAPSHOT_ROLLBACK, Task.Action.SNAPSHOT_DELETE)
BACKUP_ACTIONS = (Task.Action.BACKUP, Task.Action.RESTORE, Task.Action.BACKUP_DELETE)
RESTORE_NEW = Task.Action.RESTORE_NEW

SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the engine's rule (vzengine.validate)
DESCRIPTION_MAX = 200


def clean_snapshot_name(value) -> str:
    value = str(value or "").strip()
    if not SNAPSHOT_NAME_RE.match(value):
        raise InvalidRequest(
            f"{value!r} is not a valid snapshot name: use letters, digits, '.', '_' and '-', starting with a letter "
            "or digit, 64 characters at most (e.g. before-upgrade)."
        )
    return value


def clean_description(value) -> str:
    value = str(value or "").strip()
    if len(value) > DESCRIPTION_MAX:
        raise InvalidRequest(f"A snapshot description is at most {DESCRIPTION_MAX} characters (got {len(value)}).")
    if not value.isprintable():
        raise InvalidRequest("A snapshot description is one line without control characters.")
    return value


def plan_name(plan) -> str:
    return f"plan {plan.name}" if plan is not None else "no plan"


def check_snapshot_room(user, ve: VE) -> None:
    """Refuse (in words) a snapshot beyond the plan of ve's owner; admins are not held to it."""
    if user is not None and user.is_panel_admin:
        return
    plan = plan_of(ve)
    if plan is None:
        raise QuotaExceeded(f"VE {ve.ctid} has no plan, so it cannot have snapshots. Ask an admin to assign one.")
    have = ve.snapshots.count()
    if plan.max_snapshots == 0:
        raise QuotaExceeded(f"The {plan_name(plan)} of VE {ve.ctid} includes no snapshots.")
    if have >= plan.max_snapshots:
        raise QuotaExceeded(
            f"VE {ve.ctid} has {have} snapshot(s) and its {plan_name(plan)} allows {plan.max_snapshots}. "
            "Delete one before taking another."
        )


def check_backups_allowed(user, ve: VE) -> None:
    if user is not None and user.is_panel_admin:
        return
    plan = plan_of(ve)
    if plan is None or plan.max_backups == 0:
        raise QuotaExceeded(f"The {plan_name(plan)} of VE {ve.ctid} includes no backups. Ask an admin for one that "
                            "does.")


def find_snapshot(ve: VE, name):
    name = clean_snapshot_name(name)
    snap = ve.snapshots.filter(name=name).first()
    if snap is None:
        raise NotFound(f"VE {ve.ctid} has no snapshot {name!r}.")
    return snap


def find_backup(user, ve: VE, backup_id) -> Backup:
    """Return ve's backup backup_id if user may see it; refuse in words otherwise.

    A backup user may not see gets the same answer as one that does not exist.
    """
    from .access import visible_backups

    try:
        pk = int(str(backup_id).strip())
    except (TypeError, ValueError):
        raise InvalidRequest(f"A backup is named by its number (got {backup_id!r}).") from None
    backup = visible_backups(user).select_related("ve").filter(pk=pk).first()
    if backup is None:
        raise NotFound(f"VE {ve.ctid} has no backup {pk}.")
    if backup.ve_id != ve.pk:
        raise InvalidRequest(f"Backup {pk} is a backup of VE {backup.ctid}, not of VE {ve.ctid}: a backup is "
                             "restored over (or deleted from) the VE it was taken of.")
    if backup.is_deleted:
        raise ActionRefused(f"Backup {pk} of VE {ve.ctid} was already deleted "
                            f"({backup.deleted_at:%Y-%m-%d %H:%M}{', ' + backup.deleted_why if backup.deleted_why else ''}).")
    return backup


def clean_storage_params(user, ve: VE, action: str, params: dict) -> tuple[dict, str]:
    """Check a snapshot or backup action's input against ve and its plan; return (task params, audit detail)."""
    A = Task.Action
    if action == A.SNAPSHOT:
        name = params.get("name")
        name = clean_snapshot_name(name) if name not in (None, "") else default_snapshot_name()
        description = clean_description(params.get("description"))
        if ve.snapshots.filter(name=name).exists():
            raise InvalidRequest(f"VE {ve.ctid} already has a snapshot named {name!r}; choose another name.")
        check_snapshot_room(user, ve)
        return {"name": name, "description": description}, f"snapshot {name}"
    if action in (A.SNAPSHOT_ROLLBACK, A.SNAPSHOT_DELETE):
        snap = find_snapshot(ve, params.get("name"))
        return {"name": snap.name}, f"snapshot {snap.name} of {snap.created_at:%Y-%m-%d %H:%M:%S}"
    if action == A.BACKUP:
        check_backups_allowed(user, ve)
        automatic = bool(params.get("automatic"))
        return {"automatic": automatic}, "daily backup" if automatic else ""
    backup = find_backup(user, ve, params.get("backup"))
    if action == A.BACKUP_DELETE:
        deleting = ve.tasks.filter(status__in=Task.ACTIVE, action=A.BACKUP_DELETE, params__backup=backup.pk).first()
        if deleting is not None:
            raise ActionRefused(f"Backup {backup.pk} of VE {ve.ctid} is already being deleted (task {deleting.pk}).")
        restoring = restoring_from(backup)
        if restoring is not None:
            raise ActionRefused(f"Backup {backup.pk} of VE {ve.ctid} is being restored as new VE {restoring.ve.ctid} "
                                f"(task {restoring.pk}); delete it once that has finished.")
    return {"backup": backup.pk}, f"backup {backup.pk} of {backup.created_at:%Y-%m-%d %H:%M:%S}"


def default_snapshot_name() -> str:
    from django.utils import timezone

    return timezone.localtime().strftime("snap-%Y%m%d-%H%M%S")


DAILY = 23 * 3600  # seconds: a VE gets its daily backup when its last backup task is older than this


def queue_daily_backups(node) -> list[Task]:
    """Queue a backup of each running or stopped VE on node whose owner's plan backs up daily and that had no
    backup task for a day (a failed one counts too, so a failing backup is retried daily, not every minute).

    Called by the reconcile job (node agent); the tasks are the system's (no user).
    """
    import datetime

    from django.utils import timezone

    from .services import request_action  # which imports this module

    since = timezone.now() - datetime.timedelta(seconds=DAILY)
    recent = Task.objects.filter(action=Task.Action.BACKUP, created_at__gte=since).values("ve_id")
    ves = (VE.objects.live().filter(node=node, status__in=[VE.Status.RUNNING, VE.Status.STOPPED],
                                    owner__plan__backup_daily=True, owner__plan__max_backups__gt=0)
           .exclude(pk__in=recent).select_related("owner__plan", "node"))
    tasks = []
    for ve in ves:
        try:
            tasks.append(request_action(None, ve, Task.Action.BACKUP, automatic=True))
        except ServiceError:
            continue  # busy (or refused): the next reconcile tries again
    return tasks




def restoring_from(backup: Backup):
    """Return the active task restoring backup as a new VE, or None (its file must stay until it ends)."""
    return Task.objects.active().filter(action=RESTORE_NEW, params__backup=backup.pk).first()
