"""A course's end: closed at its end date, extended (re-opened), ended with its VEs archived, a student
removed; and the guard that keeps a closed course's VEs down for its students."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.tasks.models import Task
from vzpanel.ves.errors import ActionRefused, InvalidRequest, ServiceError
from vzpanel.ves.models import VE

from .actions import ARCHIVE, PARENT, REMOVE_STUDENT
from .bulk import enqueue_bulk, queue_bulk
from .models import Course, Membership


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
    parent, _ = queue_bulk(user, course, REMOVE_STUDENT, [(membership, ve, ARCHIVE, {"backup": bool(archive)})],
                      request=request, always_parent=True,
                      detail=f", student {who}" + (", with a backup" if archive else ", without a backup"))
    return parent


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
            parent, _ = queue_bulk(user, course, PARENT[ARCHIVE], items, request=request, always_parent=True,
                              detail=", with backups" if archive else ", without backups")
        else:
            parent = Task.objects.create(ve=None, node=course.home_node, action=PARENT[ARCHIVE], user=user,
                                         ip=audit.client_ip(request), params={"course": course.pk, "count": 0})
            audit.record(PARENT[ARCHIVE], user=user, request=request, task=parent, result="queued",
                         detail=f"course {course.pk}: no VEs")
            parent_id = parent.pk
            home = course.home_node.name
            transaction.on_commit(lambda: enqueue_bulk(home, parent_id, []))
    return parent


def close_course(course: Course, *, today=None) -> Task | None:
    """The course's end date passed (the classroom tick): stop its students' running VEs and close it.

    Nothing is destroyed: the VEs stay, stopped (suspended ones stay suspended); students see that the
    course has ended and cannot start them; the teacher extends (re-opens) or archives it. Return the
    stop task, if any VE was running.
    """
    from .services import class_action  # which imports this module

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
