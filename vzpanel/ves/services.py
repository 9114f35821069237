"""VE actions, shared by the pages and the API: check, create the Task, enqueue on commit."""

import re
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Max, Q

from vzpanel.audit import log as audit
from vzpanel.nodes.models import Node, Template
from vzpanel.tasks import actions, queue
from vzpanel.tasks.models import Task

from .models import CTID_MIN, VE, Backup


class ServiceError(Exception):
    """A request the panel refuses, with a message for the user."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    status_code = 400


class QuotaExceeded(ServiceError):
    status_code = 403


class ActionRefused(ServiceError):
    status_code = 409


class NotFound(ServiceError):
    """The thing named (a snapshot, a backup) is not there, for this VE."""

    status_code = 404


class Forbidden(ServiceError):
    """The user may see the VE but not do this to it (admins only)."""

    status_code = 403


HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

# Which states each action may start from.
DOWN = {VE.Status.STOPPED, VE.Status.SUSPENDED}  # start resumes a suspended VE (tasks/jobs.py do_start)
ALLOWED_FROM = {
    Task.Action.START: DOWN,
    Task.Action.STOP: {VE.Status.RUNNING},
    Task.Action.RESTART: {VE.Status.RUNNING, *DOWN},
    Task.Action.REINSTALL: {VE.Status.RUNNING, *DOWN},
    Task.Action.SET_PASSWORD: {VE.Status.RUNNING, *DOWN},
    Task.Action.SET_HOSTNAME: {VE.Status.RUNNING, *DOWN},
    Task.Action.DESTROY: {VE.Status.RUNNING, VE.Status.MISSING, VE.Status.RESCUE, *DOWN},  # rescue root too
    Task.Action.SNAPSHOT: {VE.Status.RUNNING, *DOWN},
    Task.Action.SNAPSHOT_ROLLBACK: {VE.Status.RUNNING, *DOWN},
    Task.Action.SNAPSHOT_DELETE: {VE.Status.RUNNING, *DOWN},
    Task.Action.BACKUP: {VE.Status.RUNNING, *DOWN},
    Task.Action.RESTORE: {VE.Status.RUNNING, *DOWN},
    # a backup's file can go whatever became of its VE (a destroyed VE's kept backups: admins only, see access)
    Task.Action.BACKUP_DELETE: {VE.Status.RUNNING, VE.Status.MISSING, VE.Status.DESTROYED, *DOWN},
    # rescue mode (tasks/jobs.py do_rescue): a VE that no longer boots runs a rescue system, its own root at /mnt
    "rescue": {VE.Status.RUNNING, VE.Status.STOPPED},
    "rescue_leave": {VE.Status.RESCUE},
}
# The actions that work on a VE's snapshots and backups (their own pages and API calls).
SNAPSHOT_ACTIONS = (Task.Action.SNAPSHOT, Task.Action.SNAPSHOT_ROLLBACK, Task.Action.SNAPSHOT_DELETE)
BACKUP_ACTIONS = (Task.Action.BACKUP, Task.Action.RESTORE, Task.Action.BACKUP_DELETE)
BULK_ACTIONS = (Task.Action.START, Task.Action.STOP)

# Setting a VE's limits (its plan's) live: admins only, so not one of request_action's actions.
SET_LIMITS = Task.Action.SET_LIMITS
# A stopped VE gets them in its config; a suspended one is left alone: its resume restores the memory it
# held under the old limits (apply them once it runs again).
SET_LIMITS_FROM = {VE.Status.RUNNING, VE.Status.STOPPED}
LIMIT_KEYS = ("ram_mb", "swap_mb", "cpus", "disk_gb", "nproc")
LIMIT_MINIMUM = {"ram_mb": 16, "swap_mb": 0, "cpus": 1, "disk_gb": 1, "nproc": 16}


def clean_hostname(value: str) -> str:
    """Return value as a valid host name, or raise InvalidRequest saying what is wrong."""
    value = (value or "").strip().lower().rstrip(".")
    if not HOSTNAME_RE.match(value):
        raise InvalidRequest(
            "A host name is letters, digits and hyphens, in dot-separated labels of at most 63 characters "
            "that do not start or end with a hyphen (e.g. web1 or web1.example.com)."
        )
    return value


def clean_password(value: str) -> str:
    if not value or len(value) < 8:
        raise InvalidRequest("The root password must be at least 8 characters long.")
    if len(value) > 128:
        raise InvalidRequest("The root password must be at most 128 characters long.")
    if any(c in value for c in "\n\r\0") or not value.isprintable():
        raise InvalidRequest("The root password may not contain line breaks or control characters.")
    return value


def clean_template(node: Node, name: str, user=None) -> str:
    """Return name if it is a template of node that user may build from (without a user: a public one)."""
    usable = Template.objects.filter(node=node)
    usable = usable.usable_by(user) if user is not None else usable.public()
    if not usable.filter(name=name).exists():
        names = ", ".join(usable.values_list("name", flat=True)) or "none yet"
        raise InvalidRequest(f"There is no OS template {name!r} on node {node.name} that you may use "
                             f"(available: {names}).")
    return name


def _new_task(user, ve: VE, action: str, params: dict, ip: str | None, audit_detail: str = "", request=None):
    why = refuse_if_locked(user, ve, action)  # every task of a VE is made here: hosting and firewall ones too
    if why:
        raise ActionRefused(why)
    ip = ip or audit.client_ip(request)
    try:
        with transaction.atomic():
            task = Task.objects.create(ve=ve, node=ve.node, action=action, params=params, user=user, ip=ip)
    except IntegrityError:
        raise ActionRefused(busy_message(ve)) from None
    audit.record(f"ve.{action}", user=user, request=request, ve=ve, task=task, result="queued", detail=audit_detail)
    return task


def busy_message(ve: VE) -> str:
    active = ve.tasks.filter(status__in=Task.ACTIVE).first()
    what = f" ({active.get_action_display()}, task {active.pk})" if active else ""
    return f"VE {ve.ctid} is busy with another task{what}; wait for it to finish or cancel it."


# Other apps may refuse an action for reasons of their own (the classroom: a student may not start the VE
# of a course that has ended). A guard is called as guard(user, ve, action) and returns why not, or "".
ACTION_GUARDS: list = []


def register_guard(guard) -> None:
    if guard not in ACTION_GUARDS:
        ACTION_GUARDS.append(guard)


# A locked VE (VE.locked says why: suspended by billing, over its traffic) is out of its owner's hands until an
# admin or the system that locked it unlocks it: they may still stop or destroy it, nothing else. Generic: it
# knows no locker. System tasks (no user) and admins pass.
LOCK_ALLOWS = {Task.Action.STOP, Task.Action.DESTROY}


def refuse_if_locked(user, ve: VE, action: str) -> str:
    """Return why user may not do action to ve because ve is locked, or "" (guard; also the console's check)."""
    if not ve.locked or action in LOCK_ALLOWS or user is None or user.is_panel_admin:
        return ""
    return f"VE {ve.ctid} is locked: {ve.locked}. Only an admin can unlock it."


register_guard(refuse_if_locked)


# Other apps may hold a change that takes resources to a quota beyond the owner's plan (resellers: all their
# customers' VEs together). A check is called as check(kind, **what) and raises QuotaExceeded saying why:
# "new_ve" (owner, plan), "owner_plan" (owner, plan: the owner's next plan), "plan" (plan: a plan with its
# new, unsaved values), "address" (ve, version: one more address).
QUOTA_CHECKS: list = []


def register_quota_check(check) -> None:
    if check not in QUOTA_CHECKS:
        QUOTA_CHECKS.append(check)


def check_quotas(kind: str, **what) -> None:
    """Ask every registered quota check whether the change fits; raise QuotaExceeded when one says no."""
    for check in QUOTA_CHECKS:
        check(kind, **what)


def request_action(user, ve: VE, action: str, *, request=None, ip=None, root_password=None, **params) -> Task:
    """Queue action on ve for user (who may already see ve); return the Task."""
    if action not in ALLOWED_FROM:
        raise InvalidRequest(f"Unknown action {action!r}.")
    if ve.status not in ALLOWED_FROM[action]:
        hint = " Leave rescue first." if ve.status == VE.Status.RESCUE else ""
        raise ActionRefused(f"VE {ve.ctid} is {ve.get_status_display()}; it cannot "
                            f"{Task(action=action).get_action_display()} now.{hint}")
    for guard in ACTION_GUARDS:
        why = guard(user, ve, action)
        if why:
            raise ActionRefused(why)
    secrets = {}
    detail = ""
    storage = action in SNAPSHOT_ACTIONS or action in BACKUP_ACTIONS
    if storage:
        # checked before "busy": a second delete of a backup is told it is already being deleted
        params, detail = clean_storage_params(user, ve, action, params)
    if ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(busy_message(ve))
    if storage:
        pass  # cleaned above
    elif action == Task.Action.DESTROY:
        params = {"delete_backups": bool(params.get("delete_backups"))}
        kept = ve.backups.kept().count()
        if kept:
            detail = f"deleting its {kept} backup(s)" if params["delete_backups"] else f"keeping its {kept} backup(s)"
    elif action == Task.Action.SET_HOSTNAME:
        params = {"hostname": clean_hostname(params.get("hostname", ""))}
        detail = f"hostname {params['hostname']}"
    elif action == Task.Action.SET_PASSWORD:
        secrets["root_password"] = clean_password(root_password)
        params = {}
    elif action == Task.Action.REINSTALL:
        ostemplate = params.get("ostemplate") or ve.ostemplate
        params = {"ostemplate": clean_template(ve.node, ostemplate, ve.owner or user)}
        if root_password:
            secrets["root_password"] = clean_password(root_password)
        detail = f"template {ostemplate}"
    else:
        params = {}
    with transaction.atomic():
        task = _new_task(user, ve, action, params, ip, detail, request)
        queue.enqueue_on_commit(task, **secrets)
    return task


def next_ctid() -> int:
    top = VE.objects.aggregate(top=Max("ctid"))["top"]
    return max(CTID_MIN + 1, (top or CTID_MIN) + 1)


def new_ve_refusal(owner, plan=None) -> str:
    """Return why owner's plan has no room for one more VE, in words, or "" (the list page disables "New VE")."""
    plan = plan if plan is not None else owner.plan
    if plan is None:
        return "You have no plan yet, so you cannot create VEs. Ask an admin to assign one."
    have = VE.objects.live().filter(owner=owner).count()
    if have >= plan.max_ves:
        return (f"Your plan {plan.name} allows {plan.max_ves} VE(s) and you have {have}. "
                "Destroy one or ask an admin for a bigger plan.")
    return ""


def create_ve(user, *, ostemplate: str, hostname: str = "", root_password: str = "", owner=None,
              start: bool = True, request=None, ip=None) -> Task:
    """Queue the creation of a VE for owner (default: user) within owner's plan; return the Task."""
    owner = owner or user
    if owner != user and not user.is_panel_admin:
        raise InvalidRequest("Only admins can create VEs for other users.")

    node = Node.local()
    params = {
        "ostemplate": clean_template(node, ostemplate, owner),
        "hostname": clean_hostname(hostname) if hostname else "",
        "start": bool(start),
    }
    secrets = {"root_password": clean_password(root_password)} if root_password else {}
    plan = owner.plan
    for attempt in range(5):
        try:
            with transaction.atomic():
                # IMMEDIATE transactions (SQLite) / the row lock (PostgreSQL) serialise quota checks per owner.
                get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
                refusal = "" if user.is_panel_admin else new_ve_refusal(owner, plan)
                if refusal:
                    raise QuotaExceeded(refusal)
                check_quotas("new_ve", owner=owner, plan=plan)  # a reseller's customer: the reseller's quota
                ve = VE.objects.create(
                    ctid=next_ctid(),
                    node=node,
                    owner=owner,
                    hostname=params["hostname"],
                    ostemplate=params["ostemplate"],
                    status=VE.Status.CREATING,
                    limits=plan.limits() if plan else {},
                )
                params = {**params, **hosting.assign_on_create(ve, plan)}  # addresses, SSH port, owner's keys
                task = _new_task(user, ve, Task.Action.CREATE, params, ip,
                                 f"template {params['ostemplate']}, owner {owner.get_username()}", request)
                queue.enqueue_on_commit(task, **secrets)
                return task
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def cancel_task(user, task: Task, *, request=None) -> bool:
    """Cancel task if it is still queued; return whether it was."""
    from django.utils import timezone

    # a locked VE's queued tasks (the stop its locker queued, above all) are not its owner's to cancel
    locked = refuse_if_locked(user, task.ve, "cancel") if task.ve_id else ""
    if locked:
        raise ActionRefused(locked)
    with transaction.atomic():
        cancelled = Task.objects.filter(pk=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.CANCELLED, finished_at=timezone.now(), message=f"Cancelled by {user.get_username()}"
        )
        if not cancelled:
            task.refresh_from_db()
            raise ActionRefused(f"Task {task.pk} is {task.status}; only a queued task can be cancelled.")
        task.refresh_from_db()
        if task.action in actions.CREATES_VE and task.ve.status == VE.Status.CREATING:
            task.ve.status = VE.Status.DESTROYED
            task.ve.destroyed_at = timezone.now()
            task.ve.save(update_fields=["status", "destroyed_at", "updated_at"])
        audit.task_finished(task)
        audit.record("task.cancel", user=user, request=request, ve=task.ve, task=task, detail=f"task {task.pk}")
    queue.cancel_job(task)
    queue.publish_task(task)
    return True


def bulk_action(user, ves, action: str, *, request=None, ip=None) -> tuple[list[Task], list[str]]:
    """Queue action on each of ves that can take it; return the tasks and why the others were skipped."""
    if action not in BULK_ACTIONS:
        raise InvalidRequest("Bulk actions are start and stop.")
    tasks, skipped = [], []
    for ve in ves:
        try:
            tasks.append(request_action(user, ve, action, request=request, ip=ip))
        except ServiceError as exc:
            skipped.append(exc.message)
    return tasks, skipped


# --- limits: a plan's limits onto existing VEs --------------------------------------------------


def plan_of(ve: VE):
    """Return the plan of ve's owner, or None (no owner, or an owner without a plan)."""
    return ve.owner.plan if ve.owner_id and ve.owner is not None else None


def limits_of(ve: VE) -> dict:
    """Return the limits stored on ve (the ones in effect), one entry per limit, None where unknown."""
    return {key: (ve.limits or {}).get(key) for key in LIMIT_KEYS}


def limits_differ(ve: VE, plan=None) -> bool:
    """Whether ve's limits are not those of plan (default: its owner's plan); False without a plan."""
    plan = plan if plan is not None else plan_of(ve)
    return plan is not None and limits_of(ve) != plan.limits()


def describe_limits(limits: dict) -> str:
    return (f"{limits.get('ram_mb')} MB RAM, {limits.get('swap_mb')} MB swap, {limits.get('cpus')} CPU(s), "
            f"{limits.get('disk_gb')} GB disk, {limits.get('nproc')} processes")


def clean_limits(limits) -> dict:
    """Return limits with every key of a plan as a whole number, or raise InvalidRequest saying what is wrong."""
    if not isinstance(limits, dict):
        raise InvalidRequest("Limits are RAM, swap, CPUs, disk and processes.")
    unknown = sorted(set(limits) - set(LIMIT_KEYS))
    if unknown:
        raise InvalidRequest(f"Unknown limit(s): {', '.join(unknown)} (known: {', '.join(LIMIT_KEYS)}).")
    out = {}
    for key in LIMIT_KEYS:
        value = limits.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < LIMIT_MINIMUM[key]:
            raise InvalidRequest(f"The limit {key} must be a whole number of at least {LIMIT_MINIMUM[key]} "
                                 f"(got {value!r}).")
        out[key] = value
    return out


def set_limits(user, ve: VE, limits: dict, *, why: str = "", request=None, ip=None) -> Task:
    """Queue setting ve's limits live (admins only); return the Task.

    The job stores them on ve.limits only when the engine took them. A set-limits task of ve still waiting
    in the queue takes the new limits instead of a second task (one active task per VE).
    """
    if not (user.is_panel_admin or (ve.owner_id and ve.owner.reseller_id == user.pk)):  # or its reseller's plan
        raise Forbidden("Only admins can change a VE's limits.")
    limits = clean_limits(limits)
    if ve.status not in SET_LIMITS_FROM:
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; its limits can be changed when it is running or "
                            "stopped (use Apply plan limits on its page then).")
    params = {"limits": limits, "why": why}
    detail = f"{describe_limits(limits)}" + (f" ({why})" if why else "")
    with transaction.atomic():
        queued = ve.tasks.filter(action=SET_LIMITS, status=Task.Status.QUEUED).first()
        # Conditional on still queued: the agent's claim is the same kind of update, so one of them wins.
        if queued is not None and Task.objects.filter(pk=queued.pk, status=Task.Status.QUEUED).update(params=params):
            queued.params = params
            audit.record(f"ve.{SET_LIMITS}", user=user, request=request, ve=ve, task=queued, result="queued",
                         detail=f"queued task {queued.pk} now sets {detail}")
            return queued
        task = _new_task(user, ve, SET_LIMITS, params, ip, detail, request)
        queue.enqueue_on_commit(task)
    return task


def apply_plan(user, ve: VE, *, request=None, ip=None) -> Task:
    """Queue setting ve's limits to its owner's plan's, live (admins only); return the Task."""
    if not user.is_panel_admin:
        raise Forbidden("Only admins can apply plan limits.")
    plan = plan_of(ve)
    if plan is None:
        who = f"its owner {ve.owner.get_username()} has no plan" if ve.owner_id else "it has no owner"
        raise InvalidRequest(f"VE {ve.ctid} has no plan limits to apply: {who}.")
    return set_limits(user, ve, plan.limits(), why=f"plan {plan.name}", request=request, ip=ip)


@dataclass
class PlanChange:
    """What applying plans to users' VEs did, for the admin who changed the plan."""

    tasks: list = field(default_factory=list)  # set-limits tasks queued (or queued ones updated)
    unchanged: int = 0  # VEs that already had their plan's limits
    skipped: list = field(default_factory=list)  # why some VEs got no task
    over_quota: list = field(default_factory=list)  # users with more VEs than their plan allows


def apply_plans(user, owners, *, limits: bool = True, plan=None, request=None, ip=None) -> PlanChange:
    """Queue each live VE of owners whose limits differ from its plan's; note owners over their plan.

    A VE's plan is its owner's, except for a classroom VE (a student's VE in a course that has a plan),
    which follows its course's plan. When `plan` was edited, every VE it governs is queued: its users'
    and those of the courses on it. Nothing is destroyed: an owner with more VEs than the plan allows is
    only reported. With limits=False, only that count is checked (a plan edit that changed how many VEs
    it allows but no limit).
    """
    change = PlanChange()
    # course_ves: the classroom's VEs that follow a course's plan (the reverse of Membership.ve)
    by_course = Q(memberships__role="student", memberships__course__plan__isnull=False)
    done: set[int] = set()

    def queue_ve(ve: VE, governing) -> None:
        done.add(ve.pk)
        if not limits_differ(ve, governing):
            change.unchanged += 1
            return
        try:
            change.tasks.append(set_limits(user, ve, governing.limits(), why=f"plan {governing.name}",
                                           request=request, ip=ip))
        except ServiceError as exc:
            change.skipped.append(exc.message)

    for owner in owners:
        own_plan = owner.plan
        ves = list(VE.objects.live().filter(owner=owner).select_related("owner", "node").order_by("ctid"))
        in_course = set(VE.objects.live().filter(owner=owner).filter(by_course).values_list("pk", flat=True))
        if own_plan is None:
            if ves and limits and len(in_course) < len(ves):
                change.skipped.append(f"{owner.get_username()} has no plan now: their {len(ves) - len(in_course)} "
                                      "VE(s) keep the limits they have.")
            continue
        if len(ves) > own_plan.max_ves:
            change.over_quota.append(
                f"{owner.get_username()} has {len(ves)} VEs but plan {own_plan.name} allows {own_plan.max_ves}. "
                f"Nothing was destroyed; they can create VEs again once they have fewer than {own_plan.max_ves}."
            )
        if not limits:
            continue
        for ve in ves:
            if ve.pk in in_course:
                continue  # its course's plan governs it, not its owner's
            ve.owner = owner  # the plan just saved, not a cached copy
            queue_ve(ve, own_plan)
    if plan is not None and limits:
        students = (VE.objects.live().filter(memberships__role="student", memberships__course__plan=plan)
                    .exclude(pk__in=done).distinct().select_related("owner", "node").order_by("ctid"))
        for ve in students:
            queue_ve(ve, plan)
    return change


# --- snapshots and backups ------------------------------------------------------------------------

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


# --- a backup restored as a new VE ----------------------------------------------------------------------

RESTORE_NEW = Task.Action.RESTORE_NEW


def restoring_from(backup: Backup):
    """Return the active task restoring backup as a new VE, or None (its file must stay until it ends)."""
    return Task.objects.active().filter(action=RESTORE_NEW, params__backup=backup.pk).first()


def clean_new_ctid(value) -> int:
    """Return value as a CTID no live VE has, or raise InvalidRequest saying what is wrong."""
    from .models import CTID_MAX

    try:
        ctid = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidRequest(f"A CTID is a whole number from {CTID_MIN} to {CTID_MAX} (got {value!r}).") from None
    if not CTID_MIN <= ctid <= CTID_MAX:
        raise InvalidRequest(f"CTID {ctid} is out of range: a CTID is from {CTID_MIN} to {CTID_MAX}.")
    if VE.objects.live().filter(ctid=ctid).exists():
        raise InvalidRequest(f"CTID {ctid} is taken by a VE; leave the CTID empty for the next free one "
                             f"({next_ctid()}).")
    return ctid


def check_ve_room(owner, *, you: bool) -> None:
    """Refuse (in words) a VE beyond owner's plan; you: the message speaks to the owner."""
    plan = owner.plan
    who, has = ("You have", "you have") if you else (f"{owner.get_username()} has", "they have")
    if plan is None:
        raise QuotaExceeded(f"{who} no plan, so no VE can be restored for {'you' if you else 'them'}. "
                            + ("Ask an admin to assign one." if you else "Assign one, or tick “beyond the plan”."))
    have = VE.objects.live().filter(owner=owner).count()
    if have >= plan.max_ves:
        raise QuotaExceeded(
            f"{'Your' if you else 'The'} plan {plan.name} {'' if you else f'of {owner.get_username()} '}allows "
            f"{plan.max_ves} VE(s) and {has} {have}. "
            + ("Destroy one or ask an admin for a bigger plan." if you else "Tick “beyond the plan” to restore anyway.")
        )


def restore_as_new(user, backup: Backup, *, owner=None, ctid=None, hostname: str = "", start: bool = True,
                   beyond_plan: bool = False, request=None, ip=None) -> Task:
    """Queue restoring backup (which user may already see) as a new VE; return the Task (its VE is the new one).

    Admins: any backup, any active owner (default: the backup's VE's owner, also a destroyed VE's former
    owner), any free CTID (default: the next one); the owner's plan must have room unless beyond_plan.
    Others: backups of their own VEs only, as a VE of their own, within their plan, under the next CTID.
    The new VE gets the owner's plan limits. Under the backup's own CTID (a destroyed VE brought back) it keeps
    its host name, identity and addresses (those still free); under any other it gets a new host name
    (default ve<ctid>), machine-id, SSH host keys and addresses from the pool (tasks/jobs.py do_restore_new).
    """
    source = backup.ve
    locked = refuse_if_locked(user, source, RESTORE_NEW)  # a locked VE's files do not come back as a new VE
    if locked:
        raise ActionRefused(locked)
    admin = user.is_panel_admin
    if not admin:
        if source.owner_id != user.pk:
            raise Forbidden(f"Only the owner of VE {source.ctid} or an admin can restore its backups as a new VE.")
        if owner is not None and owner != user:
            raise InvalidRequest("Only admins can restore a backup as a VE of another user.")
        if ctid not in (None, ""):
            raise InvalidRequest("Only admins choose the CTID; leave it out for the next free one.")
        if beyond_plan:
            raise InvalidRequest("Only admins can restore a VE beyond a plan.")
        owner = user
    if backup.is_deleted:
        raise ActionRefused(f"Backup {backup.pk} of VE {backup.ctid} was already deleted "
                            f"({backup.deleted_at:%Y-%m-%d %H:%M}); it cannot be restored.")
    deleting = Task.objects.active().filter(action=Task.Action.BACKUP_DELETE, params__backup=backup.pk).first()
    if deleting is not None:
        raise ActionRefused(f"Backup {backup.pk} of VE {backup.ctid} is being deleted (task {deleting.pk}).")
    if owner is None:
        owner = source.owner
        if owner is None:
            raise InvalidRequest(f"VE {backup.ctid} has no owner any more: name the user the new VE is for.")
    if not owner.is_active:
        raise InvalidRequest(f"User {owner.get_username()} is disabled: a VE cannot be restored for them.")
    hostname = clean_hostname(hostname) if hostname else ""
    wanted = clean_new_ctid(ctid) if ctid not in (None, "") else None
    if wanted == backup.ctid and source.is_live:
        raise InvalidRequest(f"VE {backup.ctid} still exists: a backup restored as a new VE needs a CTID of its own.")
    plan = owner.plan
    if plan is not None and backup.data_bytes and backup.data_bytes > plan.disk_gb * (1 << 30):
        raise InvalidRequest(f"Backup {backup.pk} holds {backup.data_bytes / (1 << 30):.1f} GB of files; plan "
                             f"{plan.name} gives a VE {plan.disk_gb} GB of disk.")
    for attempt in range(5):
        try:
            with transaction.atomic():
                # as in create_ve: serialise quota checks per owner
                get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
                if not (admin and beyond_plan):
                    check_ve_room(owner, you=owner == user)
                check_quotas("new_ve", owner=owner, plan=plan)
                new_ctid = wanted or next_ctid()
                same = new_ctid == backup.ctid
                ve = VE.objects.create(
                    ctid=new_ctid, node=backup.node, owner=owner, status=VE.Status.CREATING,
                    hostname=hostname or (source.hostname if same else f"ve{new_ctid}"),
                    ostemplate=source.ostemplate, limits=plan.limits() if plan else {},
                )
                params = {"backup": backup.pk, "source": backup.ctid, "hostname": ve.hostname, "start": bool(start),
                          # how many addresses of each kind the source had: the new VE gets as many from the pool
                          "addresses": address_counts(source.ip_addresses)}
                detail = (f"backup {backup.pk} of VE {backup.ctid} ({'destroyed' if not source.is_live else 'live'}"
                          f", {backup.created_at:%Y-%m-%d %H:%M:%S}), owner {owner.get_username()}"
                          + (", beyond plan" if admin and beyond_plan else ""))
                task = _new_task(user, ve, RESTORE_NEW, params, ip, detail, request)
                audit.record("ve.backup_restore_new", user=user, request=request, ve=source, ip=ip,
                             detail=f"backup {backup.pk} restored as new VE {new_ctid} (task {task.pk})")
                queue.enqueue_on_commit(task)
                return task
        except IntegrityError:
            if wanted is not None:
                raise InvalidRequest(f"CTID {wanted} was just taken by another VE; choose another.") from None
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def address_counts(addresses) -> dict:
    """How many IPv4 and IPv6 addresses are in a VE's list (as stored on its row)."""
    import ipaddress

    counts = {"4": 0, "6": 0}
    for value in addresses or []:
        try:
            counts[str(ipaddress.ip_address(str(value).split("/")[0]).version)] += 1
        except ValueError:
            continue
    return counts


from . import hosting  # noqa: E402 - connects its signal: a destroyed VE gives its addresses back
