"""Work on many student VEs: one parent Task with a child Task per VE, queued as one job per node on that
node's queue (`vzpanel.classroom.jobs.run_bulk` runs the children; the last to end closes the parent)."""

from __future__ import annotations

import logging
import secrets

import redis
from django.db import IntegrityError, transaction
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.audit.models import AuditEntry
from vzpanel.tasks.models import Task
from vzpanel.tasks.queue import JOB_TIMEOUT, get_queue, new_ref
from vzpanel.ves.errors import ActionRefused

from .actions import STOP, SUSPEND
from .models import Course

log = logging.getLogger(__name__)


def queue_bulk(user, course: Course, parent_action: str | None, items, *, request=None, ip=None, detail="",
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
            parent = Task.objects.create(ve=None, node=course.home_node, action=parent_action, user=user, ip=ip,
                                         params={"course": course.pk, "count": len(todo)},
                                         message=f"0 of {len(todo)} done")
        try:
            with transaction.atomic():
                children = Task.objects.bulk_create([
                    Task(ve=ve, node=ve.node, action=action, user=user, ip=ip, parent=parent,
                         params={**params, "course": course.pk, "membership": m.pk})
                    for m, ve, action, params in todo
                ])
        except IntegrityError:  # a task on one of the VEs was queued meanwhile (one active task per VE)
            raise ActionRefused("Another task was queued on one of these VEs meanwhile; try again.") from None
        if any(c.pk is None for c in children):
            children = list(Task.objects.filter(ve_id__in=[ve.pk for _, ve, _, _ in todo], status=Task.Status.QUEUED)
                            .select_related("node", "ve"))
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
        parent_id = parent.pk if parent is not None else None
        # each VE's task goes to its own node's queue (a spread course: one job per node)
        by_node: dict[str, list[int]] = {}
        for c in children:
            by_node.setdefault(c.node.name, []).append(c.pk)
        transaction.on_commit(lambda: [enqueue_bulk(name, parent_id, ids, at_front=at_front)
                                       for name, ids in by_node.items()])
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
