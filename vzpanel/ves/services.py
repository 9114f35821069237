"""VE actions, shared by the pages and the API: check, create the Task, enqueue on commit."""

import re

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Max

from vzpanel.audit import log as audit
from vzpanel.nodes.models import Node, Template
from vzpanel.tasks import queue
from vzpanel.tasks.models import Task

from .models import CTID_MIN, VE


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


HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

# Which states each action may start from.
DOWN = {VE.Status.STOPPED, VE.Status.SUSPENDED}  # a suspended VE starts afresh from the panel
ALLOWED_FROM = {
    Task.Action.START: DOWN,
    Task.Action.STOP: {VE.Status.RUNNING},
    Task.Action.RESTART: {VE.Status.RUNNING, *DOWN},
    Task.Action.REINSTALL: {VE.Status.RUNNING, *DOWN},
    Task.Action.SET_PASSWORD: {VE.Status.RUNNING, *DOWN},
    Task.Action.SET_HOSTNAME: {VE.Status.RUNNING, *DOWN},
    Task.Action.DESTROY: {VE.Status.RUNNING, VE.Status.MISSING, *DOWN},
}
BULK_ACTIONS = (Task.Action.START, Task.Action.STOP)


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


def clean_template(node: Node, name: str) -> str:
    if not Template.objects.filter(node=node, name=name).exists():
        names = ", ".join(Template.objects.filter(node=node).values_list("name", flat=True)) or "none yet"
        raise InvalidRequest(f"There is no OS template {name!r} on node {node.name} (available: {names}).")
    return name


def _new_task(user, ve: VE, action: str, params: dict, ip: str | None, audit_detail: str = "", request=None):
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


def request_action(user, ve: VE, action: str, *, request=None, ip=None, root_password=None, **params) -> Task:
    """Queue action on ve for user (who may already see ve); return the Task."""
    if action not in ALLOWED_FROM:
        raise InvalidRequest(f"Unknown action {action!r}.")
    if ve.status not in ALLOWED_FROM[action]:
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; it cannot {Task.Action(action).label} now.")
    if ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(busy_message(ve))
    secrets = {}
    detail = ""
    if action == Task.Action.SET_HOSTNAME:
        params = {"hostname": clean_hostname(params.get("hostname", ""))}
        detail = f"hostname {params['hostname']}"
    elif action == Task.Action.SET_PASSWORD:
        secrets["root_password"] = clean_password(root_password)
        params = {}
    elif action == Task.Action.REINSTALL:
        ostemplate = params.get("ostemplate") or ve.ostemplate
        params = {"ostemplate": clean_template(ve.node, ostemplate)}
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


def create_ve(user, *, ostemplate: str, hostname: str = "", root_password: str = "", owner=None,
              start: bool = True, request=None, ip=None) -> Task:
    """Queue the creation of a VE for owner (default: user) within owner's plan; return the Task."""
    owner = owner or user
    if owner != user and not user.is_panel_admin:
        raise InvalidRequest("Only admins can create VEs for other users.")
    node = Node.local()
    params = {
        "ostemplate": clean_template(node, ostemplate),
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
                if not user.is_panel_admin:
                    if plan is None:
                        raise QuotaExceeded("You have no plan yet, so you cannot create VEs. Ask an admin to assign one.")
                    have = VE.objects.live().filter(owner=owner).count()
                    if have >= plan.max_ves:
                        raise QuotaExceeded(
                            f"Your plan {plan.name} allows {plan.max_ves} VE(s) and you have {have}. "
                            "Destroy one or ask an admin for a bigger plan."
                        )
                ve = VE.objects.create(
                    ctid=next_ctid(),
                    node=node,
                    owner=owner,
                    hostname=params["hostname"],
                    ostemplate=params["ostemplate"],
                    status=VE.Status.CREATING,
                    limits=plan.limits() if plan else {},
                )
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

    with transaction.atomic():
        cancelled = Task.objects.filter(pk=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.CANCELLED, finished_at=timezone.now(), message=f"Cancelled by {user.get_username()}"
        )
        if not cancelled:
            task.refresh_from_db()
            raise ActionRefused(f"Task {task.pk} is {task.status}; only a queued task can be cancelled.")
        task.refresh_from_db()
        if task.action == Task.Action.CREATE and task.ve.status == VE.Status.CREATING:
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
