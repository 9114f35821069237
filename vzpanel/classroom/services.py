"""Classroom actions, shared by the pages and callable from other parts of the panel (the console).

Each checks what it is asked, writes its rows in one transaction and queues the work for the node
agent once that transaction commits. Work on many VEs is one parent Task with a child Task per VE;
`vzpanel.classroom.jobs.run_bulk` runs the children in the node agent. Beside this module: actions,
bulk, image, signin and ending (imported here too, so `classroom.services.X` keeps working).
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.nodes.models import Node
from vzpanel.tasks.models import Task
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
from .actions import (  # noqa: F401 - the old import path of the actions
    ARCHIVE,
    ASLEEP,
    CLASS_ACTIONS,
    CLOSE,
    LABELS,
    PARENT,
    PROVISION,
    REMOVE_STUDENT,
    RESET,
    RESUME,
    SAVE_IMAGE,
    START,
    STOP,
    SUSPEND,
    SUSPENDED,
    label,
)
from .bulk import enqueue_bulk, queue_bulk  # noqa: F401
from .ending import (  # noqa: F401 - the old import path of the course end
    archive_entry,
    close_course,
    end_course,
    ended_message,
    extend_course,
    leave_course,
    refuse_start_after_end,
    remove_student,
    start_refused,
)
from .image import freeze_image, image_task, set_template_image  # noqa: F401
from .models import Course, LabSession, Membership
from .signin import issue_links, issue_passwords  # noqa: F401

__all__ = ["ActionRefused", "InvalidRequest", "QuotaExceeded", "ServiceError", "wake_for_console"]

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
                  spread: bool = False, node: Node | None = None, request=None, **fields) -> Course:
    """Create a course; a golden image from a VE is frozen in the background (see freeze_image).

    spread: its students' VEs go where the placement policy puts each (over several nodes), instead of all
    on one node: the panel's own, or node (admins only), or the golden image VE's. A golden image frozen from
    a VE is a template of that VE's node only (nodes share no templates but the engine's own recipes), so a
    spread course takes an OS template.
    """
    if not (user.is_panel_admin or user.role == user.Role.TEACHER):
        raise InvalidRequest("Only teachers and admins create courses.")
    teacher = _check_teacher(user, teacher)
    if spread and image_ve is not None:
        raise InvalidRequest(SPREAD_NEEDS_TEMPLATE)
    if node is not None and (spread or not user.is_panel_admin):
        raise InvalidRequest("Only admins name a course's node, and a spread course has none.")
    # a golden image frozen from a VE is a template of that VE's node: the course's VEs go there
    node = None if spread else node or (image_ve.node if image_ve is not None else Node.local())
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
        rows = [VE(ctid=first + i, node=course.node, owner=m.user, hostname=hostname_for(m, course),
                   ostemplate=course.ostemplate, status=VE.Status.CREATING, limits=limits)
                for i, m in enumerate(members)]
        if course.node_id:
            ves = VE.objects.bulk_create(rows)
        else:  # spread: one row at a time, so that each placement counts the VEs placed before it
            ves = []
            for m, row in zip(members, rows, strict=True):
                row.node = student_node(course, m, plan)
                ves += VE.objects.bulk_create([row])
        if any(v.pk is None for v in ves):
            ves = list(VE.objects.live().filter(ctid__gte=first, ctid__lt=first + len(members)).order_by("ctid"))
        items = []
        for m, ve, port in zip(members, ves, ports, strict=True):
            m.ve, m.ssh_port, m.asleep, m.asleep_how = ve, port, "", ""
            items.append((m, ve, PROVISION, {"ostemplate": course.ostemplate, "hostname": ve.hostname, "start": True,
                                             "ssh_port": port, "limits": limits}))
        Membership.objects.bulk_update(members, ["ve", "ssh_port", "asleep", "asleep_how"])
        task, _ = queue_bulk(user, course, PARENT[PROVISION], items, request=request, parent=parent,
                        always_parent=True, detail=f", image {course.ostemplate}")
    return parent or task


SPREAD_NEEDS_TEMPLATE = ("A course spread over several nodes takes an OS template every node has: a golden image "
                         "frozen from a VE exists on that VE's node only. Choose a template, or keep the course "
                         "on one node.")


def student_node(course: Course, membership, plan) -> Node:
    """The node a spread course's student VE goes to: the placement policy's choice (vzpanel.nodes.place)."""
    from vzpanel.nodes import place

    try:
        return place.choose_node(membership.user, course.ostemplate, plan)
    except place.PlacementError as exc:
        raise ActionRefused(f"No node can take the VE of {membership.name} now ({exc.why}); nothing was created. "
                            "Ask an admin to free room, add a node or push the template.") from exc


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
    task, busy = queue_bulk(user, course, parent_action, items, request=request, ip=ip,
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
    task, _ = queue_bulk(user, course, None, items, request=request, parent=parent)
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
            task, _ = queue_bulk(user, m.course, None, [(m, ve, action, {"why": "console"})], request=request,
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
