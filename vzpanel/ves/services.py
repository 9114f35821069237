"""VE actions, shared by the pages and the API: check, create the Task, enqueue on commit.

The VE's lifecycle actions and its creation live here; the rest sits beside it (errors, guards, validate,
limits, storage, restore) and is imported here too, so `ves.services.X` keeps working for other apps.
"""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Max

from vzpanel.audit import log as audit
from vzpanel.nodes.models import Node, Template
from vzpanel.tasks import actions, queue
from vzpanel.tasks.models import Task

from .errors import ActionRefused, Forbidden, InvalidRequest, NotFound, QuotaExceeded, ServiceError  # noqa: F401
from .guards import (  # noqa: F401 - also imported from here by other apps
    ACTION_GUARDS,
    LOCK_ALLOWS,
    QUOTA_CHECKS,
    busy_message,
    check_quotas,
    refuse_if_locked,
    register_guard,
    register_quota_check,
)
from .guards import new_task as _new_task
from .limits import (  # noqa: F401 - the old import path of the limits
    LIMIT_KEYS,
    LIMIT_MINIMUM,
    SET_LIMITS,
    SET_LIMITS_FROM,
    PlanChange,
    apply_plan,
    apply_plans,
    clean_limits,
    describe_limits,
    limits_differ,
    limits_of,
    plan_of,
    register_plan_governor,
    set_limits,
)
from .models import CTID_MIN, VE
from .restore import address_counts, check_ve_room, clean_new_ctid, restore_as_new  # noqa: F401
from .storage import (  # noqa: F401 - the old import path of snapshots and backups
    BACKUP_ACTIONS,
    DAILY,
    RESTORE_NEW,
    SNAPSHOT_ACTIONS,
    check_backups_allowed,
    check_snapshot_room,
    clean_description,
    clean_snapshot_name,
    clean_storage_params,
    default_snapshot_name,
    find_backup,
    find_snapshot,
    plan_name,
    queue_daily_backups,
    restoring_from,
)
from .validate import HOSTNAME_RE, clean_hostname, clean_password  # noqa: F401

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
BULK_ACTIONS = (Task.Action.START, Task.Action.STOP)


def clean_template(node: Node | None, name: str, user=None) -> str:
    """Return name if it is a template of node (None: of any node) that user may build from (without a user:
    a public one)."""
    usable = Template.objects.filter(node=node) if node is not None else Template.objects.all()
    usable = usable.usable_by(user) if user is not None else usable.public()
    if not usable.filter(name=name).exists():
        names = ", ".join(dict.fromkeys(usable.order_by("name").values_list("name", flat=True))) or "none yet"
        where = f" on node {node.name}" if node is not None else ""
        raise InvalidRequest(f"There is no OS template {name!r}{where} that you may use (available: {names}).")
    return name


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
              start: bool = True, node=None, request=None, ip=None) -> Task:
    """Queue the creation of a VE for owner (default: user) within owner's plan; return the Task.

    The VE goes to the node the placement policy picks (vzpanel.nodes.place), or to node (a Node or its
    name) when an admin names one; it must still fit there.
    """
    owner = owner or user
    if owner != user and not user.is_panel_admin:
        raise InvalidRequest("Only admins can create VEs for other users.")
    if node is not None and not user.is_panel_admin:
        raise Forbidden("Only admins can choose the node a VE goes to; leave the node out.")
    named = node.name if isinstance(node, Node) else node

    params = {
        "ostemplate": clean_template(None, ostemplate, owner),
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
                node = place_new_ve(owner, params["ostemplate"], plan, named)
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


def place_new_ve(owner, ostemplate: str, plan, named: str | None) -> Node:
    """The node for a new VE of owner (placement policy), or a ServiceError saying why none fits."""
    from vzpanel.nodes import place

    try:
        return place.choose_node(owner, ostemplate, plan, named)
    except place.NoSuchNode as exc:
        raise InvalidRequest(f"There is no node {named!r}; choose one from the node list.") from exc
    except place.PlacementError as exc:
        raise ActionRefused(f"No node can take this VE now ({exc.why}); "
                            "nothing was created. Ask an admin to free room, add a node or push the template."
                            ) from exc


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


from . import hosting  # noqa: E402 - connects its signal: a destroyed VE gives its addresses back
