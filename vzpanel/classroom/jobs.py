"""The classroom's work in the task worker: bulk tasks, the golden image, the schedule and idle policy.

Like vzpanel.tasks.jobs, this runs in the unprivileged task worker and reaches the engine only through the
node agent (vzpanel.agent). A bulk job runs many child tasks, several at once (VZPANEL_CLASS_PARALLEL
threads, each with its own database connection; the agent runs their requests at once too): creating and starting a VE is mostly waiting on lxc-start and the kernel, so a
class of 100 is ready in seconds rather than minutes, while each child keeps its own row, claim and
outcome exactly as a single task does (vzpanel.tasks.runner).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import traceback
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from vzpanel.agent.errors import AgentError, AlreadyExists, Unsupported
from vzpanel.nodes.models import Node, Template
from vzpanel.tasks import jobs as task_jobs
from vzpanel.tasks.errors import TaskFailed
from vzpanel.tasks.models import Task
from vzpanel.tasks.queue import new_ref, publish_task
from vzpanel.tasks.runner import execute, finish
from vzpanel.ves.models import VE

from . import conf, services
from .models import Course, LabSession, Membership

log = logging.getLogger(__name__)
_port_lock = threading.Lock()


class BufferedProgress:
    """The progress callable for a child task: collects its log lines and writes them once.

    A class of 100 would otherwise write and push every step of every VE; the class page shows
    each student's state, and the task's page its whole log once it is done.
    """

    def __init__(self, task: Task):
        self.task = task
        self.lines: list[str] = []
        publish_task(task)  # once: the class page shows it running

    def __call__(self, percent: int | None, message: str = "") -> None:
        if percent is not None:
            self.task.progress = max(0, min(100, int(percent)))
        message = str(message or "").strip()
        if message:
            self.lines.append(f"[{timezone.localtime():%H:%M:%S}] {message}\n")
            self.task.message = message[:300]

    def flush(self) -> None:
        if not self.lines:
            return
        text, n = "".join(self.lines), len(self.lines)
        self.lines = []
        Task.objects.filter(pk=self.task.pk).update(progress=self.task.progress, message=self.task.message,
                                                    log=Concat(F("log"), Value(text)), log_lines=F("log_lines") + n)
        self.task.log += text
        self.task.log_lines += n


# --- running bulk tasks ---------------------------------------------------------------------------

def run_bulk(parent_id: int | None, child_ids: list[int]) -> str:
    """Run the given child tasks (of parent_id, if any), several at once; then close the parent."""
    if parent_id:
        Task.objects.filter(pk=parent_id, status=Task.Status.QUEUED).update(
            status=Task.Status.RUNNING, started_at=timezone.now())
        if Task.objects.filter(pk=parent_id, status=Task.Status.CANCELLED).exists():
            Task.objects.filter(pk__in=child_ids, status=Task.Status.QUEUED).update(
                status=Task.Status.CANCELLED, finished_at=timezone.now(), message="The class operation was cancelled")
            return "cancelled"
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for pk in child_ids[1:]:
        todo.put(pk)
    if child_ids:
        # The first one alone: it writes what the engine root shares between VEs (the network's LXC hook
        # script is rewritten under one fixed temporary name, so two first writers at once would collide).
        try:
            run_child(child_ids[0])
            if parent_id:
                parent_progress(parent_id)
        except Exception:
            log.exception("classroom task %s: bookkeeping failed", child_ids[0])

    def worker():
        try:
            while True:
                try:
                    pk = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    run_child(pk)
                except Exception:
                    log.exception("classroom task %s: bookkeeping failed", pk)
                if parent_id:
                    with contextlib.suppress(Exception):
                        parent_progress(parent_id)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=worker, name=f"class-{i}")
               for i in range(min(conf.parallel(), len(child_ids) - 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if parent_id:
        close_parent(parent_id)
    return "done"


def run_child(task_id: int) -> str:
    """Run one child task of a class operation through the one task pipeline, its log buffered."""
    close_old_connections()
    return execute(task_id, make_progress=BufferedProgress)


def parent_progress(parent_id: int) -> None:
    counts = dict(Task.objects.filter(parent_id=parent_id).values_list("status").annotate(n=Count("id")))
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in Task.FINISHED)
    bad = counts.get(Task.Status.FAILED, 0) + counts.get(Task.Status.ERRORED, 0)
    Task.objects.filter(pk=parent_id, status=Task.Status.RUNNING).update(
        progress=100 * done // max(total, 1),
        message=f"{done} of {total} done" + (f", {bad} failed" if bad else ""))


def latest_children(parent: Task) -> list[Task]:
    """The newest child per student (a retry replaces the failed try)."""
    latest: dict = {}
    for child in parent.children.select_related("ve").order_by("created_at", "id"):
        latest[child.params.get("membership") or f"ve{child.ve_id}"] = child
    return list(latest.values())


def close_course_parent(parent: Task) -> bool:
    """The sweeper's hook (registered in apps.py): close a class's bulk task whose children have all ended."""
    if parent.params.get("course") is None:
        return False
    close_parent(parent.pk)
    return True


def close_parent(parent_id: int) -> None:
    """End a parent task once none of its children is queued or running (once: a spread class's jobs, one
    per node, may end at the same moment, and the parent's row lock makes the second see it ended)."""
    with transaction.atomic():
        _close_parent(Task.objects.select_for_update(of=("self",)).select_related("node", "user").get(pk=parent_id))


def _close_parent(parent: Task) -> None:
    parent_id = parent.pk
    if parent.status not in Task.ACTIVE or parent.children.filter(status__in=Task.ACTIVE).exists():
        return
    latest = latest_children(parent)
    try:
        done = PARENT_DONE.get(parent.action)
        if done is not None:
            done(parent, latest)
    except Exception:
        ref = new_ref()
        log.exception("closing classroom task %s (ref %s)", parent_id, ref)
        finish(parent, Task.Status.ERRORED, error=f"Something went wrong on our side (reference {ref}).",
               error_ref=ref, traceback=traceback.format_exc())
        return
    failed = [c for c in latest if c.status != Task.Status.COMPLETED]
    if failed:
        first = "; ".join(f"VE {c.ve.ctid}: {(c.error or c.status).splitlines()[0][:120]}" for c in failed[:3])
        finish(parent, Task.Status.FAILED, error=f"{len(failed)} of {len(latest)} did not succeed ({first}"
                                                 + (" …" if len(failed) > 3 else "") + "). Retry them on the class page.")
    else:
        finish(parent, Task.Status.COMPLETED, result={"count": len(latest)})


# --- what each child does -------------------------------------------------------------------------

def set_awake(task: Task, **extra) -> None:
    Membership.objects.filter(pk=task.params.get("membership")).update(
        asleep="", asleep_how="", activity_at=timezone.now(), **extra)


def _next_port(task: Task, taken: int) -> int:
    """Move the student's SSH forward to the next free port (the host refused the one they had)."""
    from vzpanel.nodes.pools import used_ssh_ports

    first, last = conf.ssh_ports()
    with _port_lock:
        used = used_ssh_ports()  # students' and hosting VEs' forwards
        for port in [*range(taken + 1, last + 1), *range(first, taken)]:
            if port in used:
                continue
            try:
                with transaction.atomic():
                    Membership.objects.filter(pk=task.params.get("membership")).update(ssh_port=port)
                return port
            except IntegrityError:
                continue
    raise TaskFailed(f"No free host port is left for SSH in {first}-{last} (VZPANEL_SSH_PORTS).")


def do_provision(task: Task, progress, eng) -> dict:
    """Build the student's VE from the golden image, open its SSH port and start it."""
    ve, p = task.ve, task.params
    kwargs = task_jobs.engine_limits(p.get("limits") or {})
    port = p.get("ssh_port")
    for attempt in range(20):
        net = {"ipadd": ["auto"], "portfwd": [f"tcp:{port}:22"]} if port else {}
        try:
            info = eng.create(ve.ctid, p["ostemplate"], hostname=p.get("hostname") or None, progress=progress,
                              **kwargs, **net)
            break
        except AlreadyExists as exc:
            # Not ours (made outside the panel): leave it alone, and give this row's id up.
            task_jobs.mark_destroyed(ve)
            raise TaskFailed(f"{exc.message} on the node, made outside the panel; a retry builds this student's "
                             "VE under another id") from None
        except AgentError as exc:
            message = exc.message
            if not port or "host port" not in message or attempt == 19:
                raise
            port = _next_port(task, port)
            progress(None, f"{message}; using host port {port} instead")
    task_jobs.save_info(ve, info)
    if p.get("start", True):
        info = eng.start(ve.ctid, wait_boot=True, progress=progress)
        task_jobs.save_info(ve, info)
        set_awake(task)
    return {"ctid": ve.ctid, "status": info.status, "ssh_port": port, "ip_addresses": info.ip_addresses}


def do_reset(task: Task, progress, eng) -> dict:
    """Give the VE a fresh root from the golden image (keeping its id, address and identity)."""
    ctid, p = task.ve.ctid, task.params
    was_up = eng.is_running(ctid) or eng.is_suspended(ctid)
    if eng.is_running(ctid):
        # Its files are about to be replaced: no clean shutdown to wait for (2-3 s for most inits).
        eng.stop(ctid, fast=True, progress=progress)
    kept = None
    if p.get("keep_work"):
        kept = f"work-{time.strftime('%Y%m%d-%H%M%S')}-t{task.pk}"
        eng.snapshot(ctid, kept, description=f"the student's files before a reset to {p['ostemplate']}",
                     progress=progress)
    info = eng.reinstall(ctid, ostemplate=p["ostemplate"], snapshot=False, progress=progress)
    task_jobs.save_info(task.ve, info)
    if was_up:
        info = eng.start(ctid, wait_boot=True, progress=progress)
        task_jobs.save_info(task.ve, info)
    set_awake(task)
    return {"ctid": ctid, "ostemplate": p["ostemplate"], "kept_as_snapshot": kept, "status": info.status}


def do_start(task: Task, progress, eng) -> dict:
    info = eng.start(task.ve.ctid, wait_boot=True, progress=progress)
    task_jobs.save_info(task.ve, info)
    set_awake(task)
    return info.to_dict()


def _sleep(task: Task, how: str) -> None:
    why = task.params.get("why", "")
    Membership.objects.filter(pk=task.params.get("membership")).update(
        asleep=why if why in Membership.Sleep.values else "", asleep_how=how)


def do_stop(task: Task, progress, eng) -> dict:
    info = eng.stop(task.ve.ctid, progress=progress)
    task_jobs.save_info(task.ve, info)
    _sleep(task, "stopped")
    return info.to_dict()


def do_suspend(task: Task, progress, eng) -> dict:
    """Suspend with CRIU where the VE can be checkpointed, else stop it (and say why)."""
    ctid = task.ve.ctid
    if eng.sessions([ctid]).get(ctid):
        close_consoles(task, progress)
    try:
        result = eng.suspend(ctid, progress=progress)
        how = "suspended"
    except Unsupported as exc:
        progress(None, f"{exc.message}: stopping it instead")
        eng.stop(ctid, progress=progress)
        result, how = {"stopped_instead": exc.message}, "stopped"
    task_jobs.save_info(task.ve, eng.status(ctid))
    _sleep(task, how)
    return {"ctid": ctid, "how": how, **result}


def close_consoles(task: Task, progress) -> None:
    """End the VE's web console sessions: their pty lives on the host, and CRIU cannot dump that."""
    try:
        from vzpanel.console.client import close_ve
    except ImportError:  # a panel without the web console
        return
    n = close_ve(task.node.name, task.ve.ctid, why="suspend", timeout=5)
    if n:
        progress(None, f"closed {n} console session(s) first")


def do_resume(task: Task, progress, eng) -> dict:
    ctid = task.ve.ctid
    if eng.is_suspended(ctid):
        eng.resume(ctid, progress=progress)
        info = eng.status(ctid)
    else:
        info = eng.start(ctid, wait_boot=True, progress=progress)
    task_jobs.save_info(task.ve, info)
    set_awake(task)
    return info.to_dict()


def do_archive(task: Task, progress, eng) -> dict:
    """Back the VE up (when asked) and destroy it."""
    ve = task.ve
    path = None
    if task.params.get("backup", True):
        result = eng.backup(ve.ctid, progress=progress)  # from a snapshot when it runs
        path = result.path
    if eng.is_running(ve.ctid):
        eng.stop(ve.ctid, fast=True, progress=progress)  # it is being removed: no clean shutdown to wait for
    eng.destroy(ve.ctid, progress=progress)
    task_jobs.mark_destroyed(ve)
    Membership.objects.filter(pk=task.params.get("membership")).update(ssh_port=None)
    return {"ctid": ve.ctid, "backup": path}


def do_save_image(task: Task, progress, eng) -> dict:
    """Freeze the teacher's VE as the course's next golden image (a template on this node)."""
    p = task.params
    course = Course.objects.get(pk=p["course"])
    version = int(re.search(r"-v(\d+)$", p["name"]).group(1))
    meta = eng.template_save(task.ve.ctid, p["name"], description=f"{course.name}: golden image {version}",
                             replace=True, progress=progress)
    Template.for_course(course, p["name"], description=meta.get("description", ""))
    Course.objects.filter(pk=course.pk).update(ostemplate=p["name"], image_kind=Course.ImageKind.VE, image_ve=task.ve,
                                               image_version=version, image_updated_at=timezone.now())
    out = {"template": p["name"], "version": version}
    if p.get("reset_after"):
        course.refresh_from_db()
        try:
            reset, skipped = services.class_action(task.user, course, "reset", keep_work=p.get("keep_work", True))
            out["reset_task"] = reset.pk
            progress(None, f"reset of the class queued (task {reset.pk})" + (f"; skipped: {len(skipped)}" if skipped else ""))
        except services.ServiceError as exc:
            progress(None, f"the class was not reset: {exc.message}")
    return out


HANDLERS = {
    services.PROVISION: do_provision,
    services.RESET: do_reset,
    services.START: do_start,
    services.STOP: do_stop,
    services.SUSPEND: do_suspend,
    services.RESUME: do_resume,
    services.ARCHIVE: do_archive,
    services.SAVE_IMAGE: do_save_image,
}


# --- when a whole operation is done ---------------------------------------------------------------

def course_ended(parent: Task, latest: list[Task]) -> None:
    """Record the backups, remove the accounts made for the course and its golden images."""
    course = Course.objects.get(pk=parent.params["course"])
    archive = list(course.archive)
    ok_members = set()
    for child in latest:
        if child.status == Task.Status.COMPLETED:
            ok_members.add(child.params.get("membership"))
            m = Membership.objects.filter(pk=child.params.get("membership")).select_related("user").first()
            archive.append(services.archive_entry(m, child.ve.ctid, (child.result or {}).get("backup")))
    students = course.students().select_related("user", "ve")
    remaining = [m for m in students if m.pk not in ok_members and m.live_ve is not None]
    gone = [m for m in students if m.pk in ok_members or m.live_ve is None]
    with transaction.atomic():
        Course.objects.filter(pk=course.pk).update(archive=archive)
        services.leave_course(course, gone)
        if not remaining:
            Course.objects.filter(pk=course.pk).update(status=Course.Status.ENDED, ended_at=timezone.now())
    if not remaining:
        remove_course_images(course)


def student_removed(parent: Task, latest: list[Task]) -> None:
    """One student's VE was backed up and destroyed (class.remove): record the backup, take them out."""
    course = Course.objects.get(pk=parent.params["course"])
    for child in latest:
        if child.status != Task.Status.COMPLETED:
            continue  # it stays on the dashboard with its error and Retry
        m = Membership.objects.filter(pk=child.params.get("membership")).select_related("user").first()
        with transaction.atomic():
            course = Course.objects.select_for_update().get(pk=course.pk)
            course.archive = [*course.archive, services.archive_entry(m, child.ve.ctid,
                                                                      (child.result or {}).get("backup"))]
            course.save(update_fields=["archive"])
            if m is not None:
                services.leave_course(course, [m])


def remove_course_images(course: Course) -> None:
    if course.node_id is None:
        return  # a spread course has no image of its own (it takes an OS template)
    eng = task_jobs.engine(course.node.name)
    prefix = f"course{course.pk}-v"
    names = [n for n in Template.objects.filter(node=course.node, name__startswith=prefix).values_list("name", flat=True)]
    in_use = set(VE.objects.live().filter(ostemplate__in=names).values_list("ostemplate", flat=True))
    for name in names:
        if name in in_use:
            continue
        with contextlib.suppress(Exception):
            eng.template_remove(name)
        Template.objects.filter(node=course.node, name=name).delete()


PARENT_DONE = {services.PARENT[services.ARCHIVE]: course_ended, services.REMOVE_STUDENT: student_removed}


# --- the classroom tick: usage, lab schedule, idle policy ------------------------------------------

def sample(m: Membership, info, now, sessions: int) -> None:
    """Store what the node reports about m's VE, and whether it was used since the last look."""
    usage = ((info.extra or {}).get("resources") or {}).get("usage") or {}
    running = info.status == "running"
    cpu = usage.get("cpu_seconds")
    before = m.usage or {}
    sessions = sessions if running else 0
    if running:
        rate = None
        if before.get("running") and m.sampled_at and cpu is not None and (before.get("cpu_seconds") or 0) <= cpu:
            seconds = max((now - m.sampled_at).total_seconds(), 1.0)
            rate = (cpu - (before.get("cpu_seconds") or 0)) / seconds
        if sessions or rate is None or rate >= conf.idle_cpu() or m.activity_at is None:
            m.activity_at = now
        if m.asleep:
            m.asleep, m.asleep_how = "", ""  # someone woke it
    elif m.asleep_how == "suspended" and not (info.extra or {}).get("suspended"):
        m.asleep_how = "stopped"
    m.usage = {"running": running, "cpu_seconds": cpu, "memory_bytes": usage.get("memory_bytes"),
               "disk_bytes": usage.get("disk_bytes"), "nproc": usage.get("nproc"), "sessions": sessions,
               "suspended": bool((info.extra or {}).get("suspended"))}
    m.sampled_at = now


def tick(node_name: str | None = None, now=None) -> dict:
    """Sample every class VE of this node, run the lab schedule and the idle policy; return counts.

    Runs in the task worker (queued every 30 s or so, like reconcile) or from `manage.py classroom_tick`.
    """
    node = Node.local() if node_name is None else Node.objects.get_or_create(name=node_name)[0]
    now = now or timezone.now()
    eng = task_jobs.engine(node.name)
    counts = {"sampled": 0, "session_start": 0, "session_end": 0, "idle": 0, "closed": 0}
    courses = []
    today = timezone.localdate(now)
    # this node's courses, and the spread ones (their students on this node; the panel's own node closes them)
    for course in Course.objects.filter(Q(node=node) | Q(node__isnull=True), status=Course.Status.ACTIVE):
        if course.ends_on is not None and course.ends_on < today:
            if course.node_id is None and node.name != settings.VZPANEL_NODE:
                continue
            try:
                services.close_course(course, today=today)
                counts["closed"] += 1
            except Exception:
                log.exception("closing course %s at its end date", course.pk)
            continue
        courses.append(course)
    infos = {info.ctid: info for info in eng.list()}
    members = list(Membership.objects.filter(course__in=courses, role=Membership.Role.STUDENT, ve__node=node)
                   .exclude(ve__status=VE.Status.DESTROYED).select_related("ve", "course", "user"))
    busy = set(Task.objects.filter(status__in=Task.ACTIVE, ve_id__in=[m.ve_id for m in members])
               .values_list("ve_id", flat=True))
    todo = [m for m in members if m.ve.ctid in infos and m.ve_id not in busy]
    running = [m.ve.ctid for m in todo if infos[m.ve.ctid].status == "running"]
    sessions = eng.sessions(running) if running else {}  # one request for the whole node
    sampled = []
    for m in todo:
        sample(m, infos[m.ve.ctid], now, sessions.get(m.ve.ctid, 0))
        sampled.append(m)
    Membership.objects.bulk_update(sampled, ["usage", "sampled_at", "activity_at", "asleep", "asleep_how"])
    counts["sampled"] = len(sampled)
    by_course: dict[int, list[Membership]] = {}
    for m in sampled:
        by_course.setdefault(m.course_id, []).append(m)
    for session in LabSession.objects.filter(course__in=courses, ended=False).select_related("course"):
        course = session.course
        if now >= session.ends_at:
            action = "suspend" if session.after == Course.Sleep.SUSPEND else "stop"
            counts["session_end"] += _queue(course, action, None, "schedule")
            LabSession.objects.filter(pk=session.pk).update(started=True, ended=True)
        elif now >= session.wake_at() and not session.started:
            counts["session_start"] += _queue(course, "start", None, "schedule")
            LabSession.objects.filter(pk=session.pk).update(started=True)
    for course in courses:
        if not course.idle_minutes:
            continue
        limit = now - timedelta(minutes=course.idle_minutes)
        idle = [m for m in by_course.get(course.pk, [])
                if m.usage.get("running") and not m.usage.get("sessions")
                and m.activity_at is not None and m.activity_at <= limit
                and (m.console_at is None or m.console_at <= limit)]
        if idle:
            action = "suspend" if course.idle_action == Course.Sleep.SUSPEND else "stop"
            counts["idle"] += _queue(course, action, idle, "idle")
    return counts


def _queue(course: Course, action: str, memberships, why: str) -> int:
    try:
        task, _ = services.class_action(None, course, action, memberships, why=why)
    except services.ServiceError as exc:
        log.info("classroom %s of course %s: %s", action, course.pk, exc.message)
        return 0
    return task.children.count() if task.ve_id is None else 1

