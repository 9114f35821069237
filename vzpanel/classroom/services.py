"""Classroom actions, shared by the pages and callable from other parts of the panel (the console).

Each checks what it is asked, writes its rows in one transaction and queues the work for the node
agent once that transaction commits. Work on many VEs is one parent Task with a child Task per VE;
`vzpanel.classroom.jobs.run_bulk` runs the children in the node agent.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.models import Node, Template
from vzpanel.tasks.models import Task
from vzpanel.tasks.queue import JOB_TIMEOUT, get_queue, new_ref
from vzpanel.ves.models import VE
from vzpanel.ves.services import (
    ActionRefused,
    InvalidRequest,
    QuotaExceeded,
    ServiceError,
    clean_template,
    next_ctid,
)

from . import conf, roster
from .models import Course, LabSession, LoginLink, Membership

log = logging.getLogger(__name__)

__all__ = ["ActionRefused", "InvalidRequest", "QuotaExceeded", "ServiceError", "wake_for_console"]

# Child actions (one student's VE each): names of their own in the one registry of task actions
# (vzpanel.tasks.actions, registered in apps.py), so an action name means one thing whoever queued it.
PROVISION = "student.provision"
RESET = "student.reset"
START = "student.start"
STOP = "student.stop"
SUSPEND = "student.suspend"
RESUME = "student.resume"
ARCHIVE = "student.archive"
SAVE_IMAGE = "class.image"
REMOVE_STUDENT = "class.remove"  # parent of the one `archive` child that removes a single student
CLOSE = "class.close"  # the end date passed: the tick stops the class
# Parent actions (the whole operation).
PARENT = {
    PROVISION: "class.provision",
    RESET: "class.reset",
    START: "class.start",
    STOP: "class.stop",
    SUSPEND: "class.suspend",
    ARCHIVE: "class.end",
}
LABELS = {
    PROVISION: "provision", RESET: "reset", START: "start", STOP: "stop", SUSPEND: "suspend",
    RESUME: "resume", ARCHIVE: "archive and remove", "class.image": "freeze golden image",
    "class.provision": "provision the class", "class.reset": "reset", "class.start": "start",
    "class.stop": "stop", "class.suspend": "suspend", "class.end": "end the course",
    "class.idle": "idle policy", "class.session": "lab schedule", "class.remove": "remove a student",
    "class.close": "stop at the end date",
}
CLASS_ACTIONS = ("start", "stop", "suspend", "reset")
SUSPENDED = VE.Status.SUSPENDED  # checkpointed by the engine (CRIU)
ASLEEP = (VE.Status.STOPPED, SUSPENDED)


def label(action: str) -> str:
    return LABELS.get(action, action)


# --- courses --------------------------------------------------------------------------------------

def _check_teacher(user, teacher):
    if teacher is None:
        teacher = user
    if teacher != user and not user.is_panel_admin:
        raise InvalidRequest("Only admins can create courses for another teacher.")
    if teacher.role != teacher.Role.TEACHER and not teacher.is_panel_admin:
        raise InvalidRequest(f"{teacher.get_username()} is not a teacher.")
    return teacher


def create_course(user, *, name: str, ostemplate: str = "", image_ve=None, teacher=None, plan=None,
                  request=None, **fields) -> Course:
    """Create a course; a golden image from a VE is frozen in the background (see freeze_image)."""
    if not (user.is_panel_admin or user.role == user.Role.TEACHER):
        raise InvalidRequest("Only teachers and admins create courses.")
    teacher = _check_teacher(user, teacher)
    node = Node.local()
    if image_ve is None:
        if not ostemplate:
            raise InvalidRequest("Choose the golden image: an OS template or one of your VEs.")
        clean_template(node, ostemplate, user)
    if not user.is_panel_admin:  # the quota is the admins' to set
        for key in ("max_ves", "max_ram_mb", "max_disk_gb"):
            fields.pop(key, None)
    with transaction.atomic():
        course = Course.objects.create(
            name=name.strip(), teacher=teacher, node=node, plan=plan, ostemplate=ostemplate if image_ve is None else "",
            image_kind=Course.ImageKind.TEMPLATE if image_ve is None else Course.ImageKind.VE, **fields)
        audit.record("class.create", user=user, request=request, detail=f"course {course.pk} {course.name}")
    if image_ve is not None:
        freeze_image(user, course, image_ve, request=request)
    return course


def update_course(user, course: Course, *, request=None, **fields) -> Course:
    if not user.is_panel_admin:
        for key in ("max_ves", "max_ram_mb", "max_disk_gb"):
            fields.pop(key, None)
    changed = [k for k, v in fields.items() if getattr(course, k) != v]
    for k in changed:
        setattr(course, k, fields[k])
    if changed:
        course.save(update_fields=changed)
        audit.record("class.update", user=user, request=request, detail=f"course {course.pk}: {', '.join(changed)}")
    return course


# --- roster ---------------------------------------------------------------------------------------

@dataclass
class RosterResult:
    created: int = 0
    linked: int = 0
    already: int = 0


class RosterRejected(ServiceError):
    """The roster has errors; nothing was created. `errors` name their lines."""

    def __init__(self, errors: list[str]):
        super().__init__(f"The roster was not imported: {len(errors)} problem(s), nothing was created.")
        self.errors = errors


def import_roster(user, course: Course, data: bytes, *, request=None, what: str = "class.roster") -> RosterResult:
    """Enrol every student of a CSV roster, creating missing accounts: all of it, or nothing."""
    if not course.is_active:
        raise ActionRefused(ended_message(course) + " Its roster cannot change.")
    parsed = roster.parse(data)
    roster.resolve(parsed, course)  # the accounts of the good lines: all problems are reported at once
    if not parsed.ok:
        raise RosterRejected(parsed.errors)
    User = get_user_model()
    result = RosterResult()
    try:
        with transaction.atomic():
            new_users = []
            for row in parsed.rows:
                if row.user is None:
                    u = User(username=row.login, email=row.email, first_name=row.name[:150], role=User.Role.STUDENT,
                             teacher=course.teacher)
                    u.set_unusable_password()  # they sign in with a printed link or password
                    new_users.append(u)
            made = {u.username.lower(): u for u in User.objects.bulk_create(new_users)}
            if any(u.pk is None for u in made.values()):  # a database that does not return ids
                made = {u.username.lower(): u for u in User.objects.filter(username__in=[u.username for u in new_users])}
            memberships, regroup = [], []
            for row in parsed.rows:
                if row.user is None:
                    memberships.append(Membership(course=course, user=made[row.login.lower()], group=row.group,
                                                  display_name=row.name, created_account=True))
                    result.created += 1
                elif row.enrolled is not None:
                    m = row.enrolled
                    if (m.group, m.display_name) != (row.group, row.name):
                        m.group, m.display_name = row.group, row.name
                        regroup.append(m)
                    result.already += 1
                else:
                    memberships.append(Membership(course=course, user=row.user, group=row.group,
                                                  display_name=row.name))
                    result.linked += 1
            Membership.objects.bulk_create(memberships)
            if regroup:
                Membership.objects.bulk_update(regroup, ["group", "display_name"])
            audit.record(what, user=user, request=request,
                         detail=f"course {course.pk}: {result.created} new account(s), {result.linked} linked, "
                                f"{result.already} already enrolled")
    except IntegrityError:
        raise RosterRejected(["An account on the roster was created by someone else while it was imported; "
                              "upload the roster again."]) from None
    return result


def add_assistant(user, course: Course, username: str, *, request=None) -> Membership:
    User = get_user_model()
    other = User.objects.filter(username__iexact=(username or "").strip()).first()
    if other is None or not other.is_active:
        raise InvalidRequest(f"There is no active account {username!r}.")
    if other.role == User.Role.STUDENT or other.pk == course.teacher_id:
        raise InvalidRequest(f"{other.get_username()} cannot be an assistant of this course.")
    m, created = Membership.objects.get_or_create(course=course, user=other,
                                                  defaults={"role": Membership.Role.ASSISTANT})
    if not created and m.role != Membership.Role.ASSISTANT:
        raise InvalidRequest(f"{other.get_username()} is a student of this course.")
    audit.record("class.assistant", user=user, request=request, detail=f"course {course.pk}: {other.get_username()}")
    return m


def remove_assistant(user, course: Course, membership: Membership, *, request=None) -> None:
    if membership.course_id != course.pk or membership.role != Membership.Role.ASSISTANT:
        raise InvalidRequest("Only assistants are removed here.")
    membership.delete()
    audit.record("class.assistant.remove", user=user, request=request,
                 detail=f"course {course.pk}: {membership.user.get_username()}")


# --- bulk work ------------------------------------------------------------------------------------

def _bulk(user, course: Course, parent_action: str | None, items, *, request=None, ip=None, detail="",
          at_front=False, parent: Task | None = None, always_parent=False):
    """Queue one child task per (membership, ve, action, params) item, under a parent when there are several.

    VEs busy with another task are skipped. Return (the parent, or the only child; the skipped reasons).
    """
    ip = ip or audit.client_ip(request)
    # a locked VE (VE.locked: billing, traffic) stays down: start, resume, reset or provision would bring it back
    # to life; only stopping it is anyone's to do, and admins may do anything (as ves.services.refuse_if_locked)
    locked = []
    if not (user is not None and user.is_panel_admin):
        locked = [f"{m.name}: VE {ve.ctid} is locked: {ve.locked}" for m, ve, action, _ in items
                  if ve.locked and action not in (STOP, SUSPEND)]
        items = [item for item in items if not item[1].locked or item[2] in (STOP, SUSPEND)]
        if not items:
            raise ActionRefused("Nothing to do: " + "; ".join(locked[:3]))
    with transaction.atomic():
        ids = [ve.pk for _, ve, _, _ in items]
        busy = set(Task.objects.filter(ve_id__in=ids, status__in=Task.ACTIVE).values_list("ve_id", flat=True))
        skipped = [f"{m.name}: VE {ve.ctid} is busy with another task" for m, ve, _, _ in items if ve.pk in busy]
        todo = [item for item in items if item[1].pk not in busy]
        if not todo:
            raise ActionRefused("Nothing to do: " + ("; ".join(skipped[:3]) if skipped else "no VE in that state."))
        if parent is not None:
            Task.objects.filter(pk=parent.pk).update(status=Task.Status.RUNNING, finished_at=None,
                                                      message=f"retrying {len(todo)}")
        elif parent_action and (len(todo) > 1 or always_parent):
            parent = Task.objects.create(ve=None, node=course.node, action=parent_action, user=user, ip=ip,
                                         params={"course": course.pk, "count": len(todo)},
                                         message=f"0 of {len(todo)} done")
        try:
            with transaction.atomic():
                children = Task.objects.bulk_create([
                    Task(ve=ve, node=course.node, action=action, user=user, ip=ip, parent=parent,
                         params={**params, "course": course.pk, "membership": m.pk})
                    for m, ve, action, params in todo
                ])
        except IntegrityError:  # a task on one of the VEs was queued meanwhile (one active task per VE)
            raise ActionRefused("Another task was queued on one of these VEs meanwhile; try again.") from None
        if any(c.pk is None for c in children):
            children = list(Task.objects.filter(ve_id__in=[ve.pk for _, ve, _, _ in todo], status=Task.Status.QUEUED))
        username = user.get_username() if user is not None else ""
        who = user if user is not None and user.pk else None
        AuditEntry.objects.bulk_create([
            AuditEntry(action=f"ve.{c.action.removeprefix('student.')}", user=who, username=username, ve=c.ve, ctid=c.ve.ctid,
                       ip=ip, task=c, result="queued", detail=f"course {course.pk}"[:500])
            for c in children
        ])
        if parent is not None and parent_action:
            audit.record(parent_action, user=who, username=username, request=request, task=parent,
                         result="queued", detail=(f"course {course.pk}: {len(children)} VE(s)" + detail)[:500])
        child_ids = [c.pk for c in children]
        parent_id = parent.pk if parent is not None else None
        transaction.on_commit(lambda: enqueue_bulk(course.node.name, parent_id, child_ids, at_front=at_front))
    return (parent or children[0]), skipped + locked


def enqueue_bulk(node_name: str, parent_id: int | None, child_ids: list[int], at_front: bool = False) -> None:
    """Put one bulk job on the node's queue; if the queue is unreachable, end its tasks as errored."""
    job_id = f"class-{parent_id or child_ids[0]}-{secrets.token_hex(3)}"
    try:
        get_queue(node_name).enqueue(
            "vzpanel.classroom.jobs.run_bulk", args=(parent_id, child_ids), job_id=job_id, job_timeout=JOB_TIMEOUT,
            result_ttl=0, failure_ttl=3600, at_front=at_front,
            description=f"classroom: {len(child_ids)} task(s)" + (f" of task {parent_id}" if parent_id else ""))
    except redis.RedisError as exc:
        log.exception("cannot enqueue classroom tasks %s", child_ids)
        ref = new_ref()
        ids = [*child_ids, *([parent_id] if parent_id else [])]
        Task.objects.filter(pk__in=ids, status__in=Task.ACTIVE).update(
            status=Task.Status.ERRORED, error=f"The node agent's queue could not be reached. Reference {ref}.",
            error_ref=ref, traceback=repr(exc), finished_at=timezone.now())
        return
    # The job that runs them (vzpanel.tasks.sweeper looks it up when the agent may have died under it).
    Task.objects.filter(pk__in=[*child_ids, *([parent_id] if parent_id else [])]).update(rq_job_id=job_id)


def _quota(course: Course, adding: int) -> None:
    live = VE.objects.live().filter(memberships__course=course).distinct().count()
    total = live + adding
    if total > course.max_ves:
        raise QuotaExceeded(f"This course may have {course.max_ves} VE(s): it has {live} and {adding} more are "
                            "needed. Ask an admin to raise the course's quota.")
    plan = course.plan
    for limit, per_ve, unit, what in ((course.max_ram_mb, plan and plan.ram_mb, "MB", "RAM"),
                                      (course.max_disk_gb, plan and plan.disk_gb, "GB", "disk")):
        if limit is None:
            continue
        if plan is None:
            raise QuotaExceeded(f"The course's {what} quota is counted from its plan: choose a plan first.")
        if total * per_ve > limit:
            raise QuotaExceeded(f"{total} VE(s) of plan {plan.name} need {total * per_ve} {unit} of {what}; the "
                                f"course may use {limit} {unit}. Ask an admin to raise the quota or pick a smaller plan.")


def hostname_for(membership: Membership, course: Course) -> str:
    short = re.sub(r"[^a-z0-9-]+", "-", membership.user.get_username().split("@")[0].lower()).strip("-")[:40]
    return f"{short or 'student'}-c{course.pk}"


def _free_ports(count: int) -> list[int]:
    from vzpanel.nodes.pools import used_ssh_ports

    first, last = conf.ssh_ports()
    used = used_ssh_ports()  # students' and hosting VEs' forwards
    out = []
    for port in range(first, last + 1):
        if port not in used:
            out.append(port)
            if len(out) == count:
                return out
    raise QuotaExceeded(f"No SSH ports are left in {first}-{last} (VZPANEL_SSH_PORTS) for {count} more student(s).")


def provision(user, course: Course, memberships=None, *, request=None, parent: Task | None = None) -> Task:
    """Build, start and open SSH to a VE for every student who has none; return the parent task."""
    for attempt in range(3):
        try:
            return _provision(user, course, memberships, request=request, parent=parent)
        except IntegrityError:  # a VE made meanwhile took one of the ids (PostgreSQL; SQLite serialises)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _provision(user, course: Course, memberships, *, request, parent) -> Task:
    if not course.is_active:
        raise ActionRefused("This course has ended.")
    if not course.ostemplate:
        raise ActionRefused("The course has no golden image yet (it is still being frozen, or failed: see above).")
    clean_template(course.node, course.ostemplate, course.teacher)  # its own image, or one its teacher may use
    with transaction.atomic():
        Course.objects.select_for_update().filter(pk=course.pk).first()  # one provisioning at a time per course
        members = course.students().select_related("user", "ve").filter(Q(ve__isnull=True) | Q(ve__status=VE.Status.DESTROYED))
        if memberships is not None:
            members = members.filter(pk__in=[m.pk for m in memberships])
        members = list(members)
        if not members:
            raise ActionRefused("Every student of this course has a VE already.")
        _quota(course, len(members))
        ports = _free_ports(len(members)) if course.ssh_access else [None] * len(members)
        plan = course.plan
        limits = plan.limits() if plan else {}
        first = next_ctid()
        ves = VE.objects.bulk_create([
            VE(ctid=first + i, node=course.node, owner=m.user, hostname=hostname_for(m, course),
               ostemplate=course.ostemplate, status=VE.Status.CREATING, limits=limits)
            for i, m in enumerate(members)
        ])
        if any(v.pk is None for v in ves):
            ves = list(VE.objects.live().filter(ctid__gte=first, ctid__lt=first + len(members)).order_by("ctid"))
        items = []
        for m, ve, port in zip(members, ves, ports, strict=True):
            m.ve, m.ssh_port, m.asleep, m.asleep_how = ve, port, "", ""
            items.append((m, ve, PROVISION, {"ostemplate": course.ostemplate, "hostname": ve.hostname, "start": True,
                                             "ssh_port": port, "limits": limits}))
        Membership.objects.bulk_update(members, ["ve", "ssh_port", "asleep", "asleep_how"])
        task, _ = _bulk(user, course, PARENT[PROVISION], items, request=request, parent=parent,
                        always_parent=True, detail=f", image {course.ostemplate}")
    return parent or task


def _targets(course: Course, action: str, memberships):
    """(membership, ve, child action, params) for each student VE that can take action now, and the rest."""
    items, skipped = [], []
    for m in memberships:
        ve = m.live_ve
        if ve is None:
            skipped.append(f"{m.name} has no VE")
            continue
        if action == "reset":
            ok, child = ve.status in (VE.Status.RUNNING, *ASLEEP), RESET
        elif action == "start":
            ok = ve.status in ASLEEP
            child = RESUME if ve.status == SUSPENDED or m.asleep_how == "suspended" else START
        elif action in ("stop", "suspend"):
            ok, child = ve.status == VE.Status.RUNNING, (STOP if action == "stop" else SUSPEND)
        else:
            raise InvalidRequest(f"Unknown class action {action!r}.")
        if not ok:
            skipped.append(f"{m.name}: VE {ve.ctid} is {ve.status}")
            continue
        items.append((m, ve, child, {}))
    return items, skipped


def class_action(user, course: Course, action: str, memberships=None, *, keep_work: bool = False,
                 request=None, ip=None, why: str = "") -> tuple[Task, list[str]]:
    """Start, stop, suspend or reset the VEs of some students (default: all); return the task and the skipped."""
    if action not in CLASS_ACTIONS:
        raise InvalidRequest(f"Unknown class action {action!r}.")
    if not course.is_active:
        raise ActionRefused(ended_message(course))
    if memberships is None:
        memberships = course.students().select_related("user", "ve")
    items, skipped = _targets(course, action, memberships)
    if action == "reset":
        if not course.ostemplate:
            raise ActionRefused("The course has no golden image yet.")
        clean_template(course.node, course.ostemplate, course.teacher)
        items = [(m, ve, child, {"ostemplate": course.ostemplate, "keep_work": bool(keep_work)})
                 for m, ve, child, _ in items]
    if why:
        items = [(m, ve, child, {**params, "why": why}) for m, ve, child, params in items]
    if not items:
        raise ActionRefused("Nothing to do: " + ("; ".join(skipped[:3]) + (" …" if len(skipped) > 3 else "")
                                                 if skipped else "the course has no students."))
    parent_action = {"idle": "class.idle", "schedule": "class.session", "ended": CLOSE}.get(why) or f"class.{action}"
    task, busy = _bulk(user, course, parent_action, items, request=request, ip=ip,
                       detail=", keeping their work as snapshots" if keep_work else "")
    return task, skipped + busy


def reset_own(user, membership: Membership, *, keep_work: bool = False, request=None) -> Task:
    """Let a student reset their own VE to the course's golden image."""
    if membership.user_id != user.pk or membership.role != Membership.Role.STUDENT:
        raise InvalidRequest("You can reset only your own VE.")
    task, _ = class_action(user, membership.course, "reset", [membership], keep_work=keep_work, request=request)
    return task


def retry(user, course: Course, membership: Membership, *, request=None) -> Task:
    """Run the failed last task of a student's VE again, under the same parent."""
    last = last_task(membership)
    if last is None or last.status not in (Task.Status.FAILED, Task.Status.ERRORED, Task.Status.CANCELLED):
        raise ActionRefused(f"{membership.name}'s last task did not fail; there is nothing to retry.")
    parent = last.parent
    if last.action == PROVISION:
        ve = membership.live_ve
        if ve is None or ve.status == VE.Status.CREATING:
            if ve is not None:
                ve.status, ve.destroyed_at = VE.Status.DESTROYED, timezone.now()
                ve.save(update_fields=["status", "destroyed_at", "updated_at"])
            return provision(user, course, [membership], request=request, parent=parent)
        items = [(membership, ve, START, {})]
    else:
        ve = membership.live_ve
        if ve is None:
            raise ActionRefused(f"{membership.name} has no VE any more.")
        params = {k: v for k, v in last.params.items() if k not in ("course", "membership")}
        if last.action == RESET:
            params["ostemplate"] = course.ostemplate  # the image as it is now
        items = [(membership, ve, last.action, params)]
    task, _ = _bulk(user, course, None, items, request=request, parent=parent)
    return parent or task


def last_task(membership: Membership) -> Task | None:
    """The newest task on the student's VE (the VE of a failed provisioning included)."""
    if membership.ve_id is None:
        return None
    return Task.objects.filter(ve_id=membership.ve_id).order_by("-created_at", "-id").first()


def cancel_queued(user, course: Course, parent: Task, *, request=None) -> int:
    """Cancel the children of a class operation that have not started; return how many."""
    from vzpanel.ves.services import cancel_task

    n = 0
    for child in parent.children.filter(status=Task.Status.QUEUED).select_related("ve"):
        try:
            cancel_task(user, child, request=request)
            n += 1
        except ServiceError:
            continue
    return n


# --- golden image ---------------------------------------------------------------------------------

def set_template_image(user, course: Course, ostemplate: str, *, request=None) -> Course:
    """Make an OS template the course's golden image: new VEs get it, existing ones on reset."""
    clean_template(course.node, ostemplate, user)
    course.ostemplate, course.image_kind, course.image_ve = ostemplate, Course.ImageKind.TEMPLATE, None
    course.image_version += 1
    course.image_updated_at = timezone.now()
    course.save(update_fields=["ostemplate", "image_kind", "image_ve", "image_version", "image_updated_at"])
    audit.record("class.image", user=user, request=request, detail=f"course {course.pk}: template {ostemplate}")
    return course


def freeze_image(user, course: Course, ve: VE, *, reset_after: bool = False, keep_work: bool = True,
                 request=None) -> Task:
    """Save one of the teacher's VEs as the course's next golden image (a template on the node)."""
    if not (user.is_panel_admin or ve.owner_id in (user.pk, course.teacher_id)):
        raise InvalidRequest("The golden image must be one of your own VEs.")
    if course.memberships.filter(ve=ve).exists():
        raise InvalidRequest("A student's VE cannot be the golden image; prepare one of your own VEs.")
    if ve.status not in (VE.Status.RUNNING, *ASLEEP):
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; it cannot be frozen now.")
    name = course.template_name(course.image_version + 1)
    params = {"course": course.pk, "name": name, "reset_after": bool(reset_after), "keep_work": bool(keep_work)}
    try:
        with transaction.atomic():
            task = Task.objects.create(ve=ve, node=course.node, action=SAVE_IMAGE, params=params, user=user,
                                       ip=audit.client_ip(request))
            audit.record("class.image", user=user, request=request, ve=ve, task=task, result="queued",
                         detail=f"course {course.pk}: freeze VE {ve.ctid} as {name}")
            transaction.on_commit(lambda: enqueue_bulk(course.node.name, None, [task.pk]))
    except IntegrityError:
        raise ActionRefused(f"VE {ve.ctid} is busy with another task; wait for it to finish.") from None
    return task


def image_task(course: Course) -> Task | None:
    return Task.objects.filter(action=SAVE_IMAGE, params__course=course.pk).order_by("-created_at").first()


# --- sign-in sheets ---------------------------------------------------------------------------------

def issue_links(user, course: Course, memberships) -> list[tuple[Membership, str]]:
    """New one-time sign-in links for these students (older unused ones stop working); the keys, once."""
    out = []
    with transaction.atomic():
        for m in course.governed_students().filter(pk__in=[m.pk for m in memberships]).select_related("user"):
            _, key = LoginLink.issue(m.user, course=course, created_by=user)
            out.append((m, key))
        audit.record("class.links", user=user, detail=f"course {course.pk}: {len(out)} sign-in link(s)")
    return out


def _password() -> str:
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))


def issue_passwords(user, course: Course, memberships) -> list[tuple[Membership, str]]:
    """Set new random initial passwords for these students; return them (shown once, never stored)."""
    memberships = list(course.governed_students().filter(pk__in=[m.pk for m in memberships]).select_related("user"))
    plain = [_password() for _ in memberships]
    # PBKDF2 releases the GIL: hash on every core (about a quarter of a second each).
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashed = list(pool.map(make_password, plain))
    User = get_user_model()
    with transaction.atomic():
        for m, h in zip(memberships, hashed, strict=True):
            User.objects.filter(pk=m.user_id).update(password=h)
        audit.record("class.passwords", user=user, detail=f"course {course.pk}: {len(memberships)} password(s)")
    return list(zip(memberships, plain, strict=True))


# --- the console wakes a sleeping VE --------------------------------------------------------------------

def wake_for_console(user, ve: VE, *, wait: float = 0.0, request=None) -> Task | None:
    """Note that a console is being opened on ve, and wake it if the classroom put it to sleep.

    Call this from the console path before attaching (the web process; it never touches the engine).
    Returns the resume/start task (already finished when `wait` seconds were enough), or None when
    there was nothing to wake. A VE someone stopped on purpose stays stopped.
    """
    if not VE.objects.visible_to(user).filter(pk=ve.pk).exists():
        return None
    now = timezone.now()
    Membership.objects.filter(ve=ve).update(console_at=now, activity_at=now)
    ve.refresh_from_db()
    m = (Membership.objects.filter(ve=ve, role=Membership.Role.STUDENT, course__status=Course.Status.ACTIVE)
         .select_related("course", "user").first())
    if m is None or ve.status not in ASLEEP or not m.asleep:
        return None
    task = ve.tasks.filter(status__in=Task.ACTIVE).first()
    if task is None:
        action = RESUME if ve.status == SUSPENDED or m.asleep_how == "suspended" else START
        try:
            task, _ = _bulk(user, m.course, None, [(m, ve, action, {"why": "console"})], request=request,
                            at_front=True)
        except ActionRefused:
            task = ve.tasks.filter(status__in=Task.ACTIVE).first()
    deadline = time.monotonic() + wait
    while task is not None and time.monotonic() < deadline:
        task.refresh_from_db()
        if task.status in Task.FINISHED:
            break
        time.sleep(0.1)
    return task


# --- course end -------------------------------------------------------------------------------------

def ended_message(course: Course) -> str:
    if course.is_closed:
        when = f" on {course.ends_on:%Y-%m-%d}" if course.ends_on else ""
        return (f"This course ended{when}: its VEs are stopped and cannot be started. "
                "The teacher can extend the course to re-open it.")
    return f"This course is {course.get_status_display()}."


def leave_course(course: Course, memberships) -> int:
    """Take these students out of course; delete the accounts made for it that are in no other course.

    The rule of course end and of removing one student: an account the roster linked (it existed before)
    only leaves the course, and so does one still enrolled elsewhere. Return how many accounts were deleted.
    """
    User = get_user_model()
    memberships = list(memberships)
    others = set(Membership.objects.filter(user__in=[m.user_id for m in memberships]).exclude(course=course)
                 .values_list("user_id", flat=True))
    doomed = [m.user_id for m in memberships if m.created_account and m.user_id not in others]
    with transaction.atomic():
        Membership.objects.filter(pk__in=[m.pk for m in memberships]).delete()
        # The teacher's hold on a kept account ends with its last course of theirs.
        (User.objects.filter(pk__in=[m.user_id for m in memberships], teacher_id=course.teacher_id)
         .exclude(course_memberships__course__teacher_id=course.teacher_id).update(teacher=None))
        _, deleted = User.objects.filter(pk__in=doomed, role=User.Role.STUDENT).delete()
    return deleted.get(User._meta.label, 0)


def archive_entry(membership: Membership | None, ctid, backup) -> dict:
    """One line of Course.archive: whose VE it was and where its backup is."""
    return {"student": membership.user.get_username() if membership else "", "name": membership.name if membership
            else "", "ctid": ctid, "backup": backup, "at": timezone.now().isoformat(timespec="seconds")}


def remove_student(user, course: Course, membership: Membership, *, archive: bool = True, request=None) -> Task | None:
    """Take one student out of the course: back up (when archive) and destroy their VE, then their account
    if the course made it and no other course has them (else they only leave this one).

    With a VE this is a `class.remove` parent with one `archive` child (the course end's own child, run
    by run_bulk; a failure stays on the dashboard with Retry). Return that parent, or None when there was
    no VE and the student was removed at once.
    """
    if membership.course_id != course.pk or membership.role != Membership.Role.STUDENT:
        raise InvalidRequest("Only a student of this course can be removed here.")
    if not (course.is_active or course.is_closed):
        raise ActionRefused(f"This course is {course.get_status_display()}; its roster cannot change.")
    who = membership.user.get_username()
    ve = membership.live_ve
    if ve is not None and ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(f"{membership.name}'s VE {ve.ctid} is busy with a task; wait for it, then remove them.")
    if ve is not None and ve.status == VE.Status.CREATING:
        # Its provisioning failed and nothing runs it: the engine has no such VE (or retry would have found it).
        ve.status, ve.destroyed_at = VE.Status.DESTROYED, timezone.now()
        ve.save(update_fields=["status", "destroyed_at", "updated_at"])
        ve = None
    if ve is None:
        with transaction.atomic():
            deleted = leave_course(course, [membership])
            audit.record(REMOVE_STUDENT, user=user, request=request,
                         detail=f"course {course.pk}: student {who} (no VE)"
                                + (", account deleted" if deleted else ", account kept"))
        return None
    parent, _ = _bulk(user, course, REMOVE_STUDENT, [(membership, ve, ARCHIVE, {"backup": bool(archive)})],
                      request=request, always_parent=True,
                      detail=f", student {who}" + (", with a backup" if archive else ", without a backup"))
    return parent


def add_student(user, course: Course, *, name: str, login: str, group: str = "", request=None) -> Membership:
    """Enrol one student by hand (name and e-mail or user name), with the roster's own checks."""
    if not (login or "").strip():
        raise InvalidRequest("Give the student's e-mail address or user name.")
    buf = io.StringIO()
    csv.writer(buf).writerows([["name", "email", "group"], [name.strip(), login.strip(), group.strip()]])
    try:
        import_roster(user, course, buf.getvalue().encode(), request=request, what="class.student.add")
    except RosterRejected as exc:
        raise InvalidRequest(" ".join(re.sub(r"^Line \d+: ", "", e) for e in exc.errors)) from None
    login = login.strip()
    return (Membership.objects.select_related("user").filter(course=course, role=Membership.Role.STUDENT)
            .filter(Q(user__username__iexact=login) | Q(user__email__iexact=login)).order_by("-id").first())


def end_course(user, course: Course, *, archive: bool = True, request=None) -> Task:
    """Back up (when archive) and remove every student VE, then the accounts made for the course."""
    if not (course.is_active or course.is_closed):
        raise ActionRefused(f"This course is {course.get_status_display()} already.")
    members = list(course.students().select_related("user", "ve"))
    busy = Task.objects.filter(ve_id__in=[m.ve_id for m in members if m.ve_id], status__in=Task.ACTIVE).count()
    if busy:
        raise ActionRefused(f"{busy} of the class's VEs are busy with a task; wait for them, then end the course.")
    with transaction.atomic():
        course.status, course.closed_at = Course.Status.ENDING, None
        course.save(update_fields=["status", "closed_at"])
        items = [(m, m.live_ve, ARCHIVE, {"backup": bool(archive)}) for m in members
                 if m.live_ve is not None and m.live_ve.status != VE.Status.CREATING]
        if items:
            parent, _ = _bulk(user, course, PARENT[ARCHIVE], items, request=request, always_parent=True,
                              detail=", with backups" if archive else ", without backups")
        else:
            parent = Task.objects.create(ve=None, node=course.node, action=PARENT[ARCHIVE], user=user,
                                         ip=audit.client_ip(request), params={"course": course.pk, "count": 0})
            audit.record(PARENT[ARCHIVE], user=user, request=request, task=parent, result="queued",
                         detail=f"course {course.pk}: no VEs")
            parent_id = parent.pk
            transaction.on_commit(lambda: enqueue_bulk(course.node.name, parent_id, []))
    return parent


def close_course(course: Course, *, today=None) -> Task | None:
    """The course's end date passed (the classroom tick): stop its students' running VEs and close it.

    Nothing is destroyed: the VEs stay, stopped (suspended ones stay suspended); students see that the
    course has ended and cannot start them; the teacher extends (re-opens) or archives it. Return the
    stop task, if any VE was running.
    """
    today = today or timezone.localdate()
    if not course.is_active or course.ends_on is None or course.ends_on >= today:
        return None
    task, busy = None, []
    with transaction.atomic():
        if not Course.objects.filter(pk=course.pk, status=Course.Status.ACTIVE).exists():
            return None
        try:
            task, skipped = class_action(None, course, "stop", why="ended")
            busy = [s for s in skipped if "busy" in s]
        except ServiceError:  # no VE running
            pass
        now = timezone.now()
        Course.objects.filter(pk=course.pk).update(status=Course.Status.ENDING, closed_at=now)
        course.status, course.closed_at = Course.Status.ENDING, now
        stopping = 0 if task is None else (task.children.count() if task.ve_id is None else 1)
        audit.record("class.closed", username="system",
                     detail=(f"course {course.pk}: its end date {course.ends_on:%Y-%m-%d} passed; stopping {stopping} "
                             "VE(s), nothing removed" + (f"; busy, left as they are: {'; '.join(busy)}" if busy else "")
                             )[:500])
    return task


def extend_course(user, course: Course, ends_on, *, request=None) -> Course:
    """Move the end date; a course that closed itself at its end date opens again (its VEs stay stopped)."""
    if not (course.is_active or course.is_closed):
        raise ActionRefused("Only a running course, or one whose end date has passed, can be extended.")
    reopen = course.is_closed
    if reopen and (ends_on is None or ends_on < timezone.localdate()):
        raise InvalidRequest(f"To re-open the course, give an end date from today ({timezone.localdate():%Y-%m-%d}) on.")
    if ends_on is not None and course.ends_on is not None and ends_on <= course.ends_on:
        raise InvalidRequest(f"The new end date must be after {course.ends_on:%Y-%m-%d}.")
    fields = ["ends_on"]
    with transaction.atomic():
        if reopen:
            course.status, course.closed_at = Course.Status.ACTIVE, None
            fields += ["status", "closed_at"]
            if not Course.objects.filter(pk=course.pk, status=Course.Status.ENDING, closed_at__isnull=False).exists():
                raise ActionRefused("The course is being archived; it cannot be extended.")
        course.ends_on = ends_on
        course.save(update_fields=fields)
        audit.record("class.extend", user=user, request=request,
                     detail=f"course {course.pk}: ends {ends_on or 'open-ended'}" + (", re-opened" if reopen else ""))
    return course


def refuse_start_after_end(user, ve: VE, action: str) -> str:
    """The guard vzpanel.ves.services.request_action asks (registered in apps.py): see start_refused."""
    return start_refused(user, ve) if action in (Task.Action.START, Task.Action.RESTART) else ""


def start_refused(user, ve: VE) -> str:
    """Why user may not start (or resume, restart) ve now, or "": a student's VE of a course that has ended.

    The course's teacher and admins still may (to look at a student's work); the student may not.
    """
    m = (Membership.objects.filter(ve=ve, role=Membership.Role.STUDENT)
         .exclude(course__status=Course.Status.ACTIVE).select_related("course").first())
    if m is None:
        return ""
    if user is not None and getattr(user, "pk", None) and (user.is_panel_admin or user.pk == m.course.teacher_id):
        return ""
    return ended_message(m.course)


# --- lab schedule -------------------------------------------------------------------------------------

def add_session(user, course: Course, *, starts_at, ends_at, lead_minutes: int = 5, after: str = "stop",
                request=None) -> LabSession:
    if ends_at <= starts_at:
        raise InvalidRequest("A session must end after it starts.")
    if after not in Course.Sleep.values:
        raise InvalidRequest("After a session the VEs stop or suspend.")
    session = LabSession.objects.create(course=course, starts_at=starts_at, ends_at=ends_at,
                                        lead_minutes=lead_minutes, after=after)
    audit.record("class.session", user=user, request=request, detail=f"course {course.pk}: {session}")
    return session


def template_names(node: Node) -> list[str]:
    return list(Template.objects.filter(node=node).values_list("name", flat=True))
