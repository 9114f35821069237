"""End the tasks whose node agent died under them (runs in the node agent, from the reconcile job).

A task is `running` while its RQ job runs; if the agent (the RQ worker and its work-horse) is killed, the
row stays `running` forever, and a `queued` row whose job vanished from Redis (a Redis restart, a flush)
never runs. The sweeper ends such a task as errored, in words, and re-reads its VE's state from the
engine; a classroom parent is closed once none of its children is active.

A task is left alone unless RQ itself shows its job is gone:
- queued: its job is not in Redis any more;
- running: its job is not in Redis, or has ended (finished, failed, stopped, cancelled) without the row
  being ended, or is marked started by a worker that is dead: its key expired (no heartbeat), or it
  ran on this host and its process is gone, and no orphaned work-horse (a worker's forked child whose
  parent died, which finishes its job on its own) is left on this host.
Rows younger than `grace` seconds are skipped (a row is written before its job is queued).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

from django.db.models import Q
from django.utils import timezone

from . import actions
from .models import Task
from .queue import get_redis, publish_task
from .runner import finish

log = logging.getLogger(__name__)

DIED = "The node agent stopped while this task ran; the VE's state was re-read."
DIED_NO_VE = "The node agent stopped while this task ran."
LOST = ("The node agent's queue lost this task before it ran (Redis was restarted or emptied); nothing was "
        "done. Run it again.")
GRACE = 60  # seconds


def sweep(node, *, grace: float = GRACE, now=None) -> dict:
    """End the dead tasks of node (a Node); return how many were ended, by kind."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.worker import Worker

    now = now or timezone.now()
    conn = get_redis()
    counts = {"died": 0, "lost": 0, "parents": 0}
    old = now - timedelta(seconds=grace)
    tasks = list(Task.objects.active().filter(node=node).filter(
        Q(started_at__lte=old) | Q(started_at__isnull=True, created_at__lte=old)).select_related("ve", "node", "user"))
    jobs: dict[str, object] = {}
    workers = _Workers(conn, Worker)
    parents = set()
    for task in sorted(tasks, key=lambda t: t.ve_id is None):  # children before their parents
        single = task.ve_id is not None and task.parent_id is None and "course" not in (task.params or {})
        job_id = task.rq_job_id or (f"task-{task.pk}" if single else "")
        if not job_id:
            continue  # a classroom row from before their job ids were recorded: cannot tell, leave it
        if job_id not in jobs:
            try:
                jobs[job_id] = Job.fetch(job_id, connection=conn)
            except NoSuchJobError:
                jobs[job_id] = None
            except Exception:  # unreadable: do not guess
                log.warning("job %s of task %s could not be read", job_id, task.pk, exc_info=True)
                jobs[job_id] = "unknown"
        job = jobs[job_id]
        if job == "unknown":
            continue
        if task.ve_id is None:
            # A classroom parent: it ends when its children have ended and its job is dead.
            if job is None or _dead(job, workers):
                parents.add(task.pk)
            continue
        if task.status == Task.Status.QUEUED:
            kind = "lost" if job is None else ""
        else:
            kind = "died" if job is None or _dead(job, workers) else ""
        if not kind:
            continue
        if _end(task, kind):
            counts[kind] += 1
            if task.parent_id:
                parents.add(task.parent_id)
    for parent_id in parents:
        if _close_parent(parent_id):
            counts["parents"] += 1
    return counts


def _end(task: Task, kind: str) -> bool:
    """End task as errored if it is still in the state it was found in; re-read its VE."""
    ended = Task.objects.filter(pk=task.pk, status=task.status).update(
        status=Task.Status.ERRORED, finished_at=timezone.now())
    if not ended:
        return False  # it ended meanwhile (its job finished it): leave its outcome
    log.warning("task %s (%s): %s", task.pk, task.action, kind)
    if kind == "lost":
        error = LOST
    else:
        error = DIED if task.ve_id else DIED_NO_VE
        from . import jobs

        jobs.after_failure(task)  # the VE's state from the engine (a create that never was gives its id back)
    finish(task, Task.Status.ERRORED, error=error)
    return True


def _close_parent(parent_id: int) -> bool:
    """Close a classroom parent whose children have all ended (as the bulk job would have)."""
    parent = Task.objects.filter(pk=parent_id, status__in=Task.ACTIVE).first()
    if parent is None or parent.children.filter(status__in=Task.ACTIVE).exists():
        return False
    if not any(closer(parent) for closer in actions.PARENT_CLOSERS):
        finish(parent, Task.Status.ERRORED, error=DIED_NO_VE)
    parent.refresh_from_db()
    publish_task(parent)
    return parent.status not in Task.ACTIVE


def _dead(job, workers: _Workers) -> bool:
    """Whether RQ shows that nothing runs job any more."""
    from rq.job import JobStatus

    status = job.get_status(refresh=False)
    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        return True  # it ended, and its task row did not
    if status != JobStatus.STARTED:
        return False  # queued, deferred, scheduled: it will run
    return not workers.alive(job.worker_name)


class _Workers:
    """Which RQ workers are alive, and whether an orphaned work-horse runs on this host."""

    def __init__(self, conn, worker_class):
        self.conn = conn
        self.worker_class = worker_class
        self.host = socket.gethostname()
        self.cache: dict[str, bool] = {}
        self.orphans: bool | None = None

    def alive(self, name: str | None) -> bool:
        if not name:
            return False
        if name not in self.cache:
            self.cache[name] = self._alive(name)
        return self.cache[name]

    def _alive(self, name: str) -> bool:
        worker = self.worker_class.find_by_key(self.worker_class.redis_worker_namespace_prefix + name,
                                               connection=self.conn)
        if worker is not None and worker.hostname != self.host:
            return True  # another host's: alive until its heartbeat stops and its key expires
        if worker is not None and worker.pid and _is_worker(worker.pid, worker.birth_date):
            return True
        # The worker is gone; its forked work-horse runs on by itself if it was not killed with it.
        return self._orphan_horse()

    def _orphan_horse(self) -> bool:
        if self.orphans is None:
            known = {w.pid for w in self.worker_class.all(connection=self.conn) if w.hostname == self.host and w.pid}
            orphans = list(_orphan_horses(known))
            if orphans:
                log.info("work-horse(s) without a worker on this host (%s): leaving started tasks alone", orphans)
            self.orphans = bool(orphans)
        return self.orphans


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _looks_like_worker(cmdline: str) -> bool:
    return "rqworker" in cmdline or " rq worker" in f" {cmdline}" or "bin/rq worker" in cmdline


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (field 3 = state is [0])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started_at(fields: list[str]) -> float | None:
    """When the process started (seconds since the epoch)."""
    try:
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _is_worker(pid: int, birth) -> bool:
    """Whether pid is (still) that RQ worker: alive, an RQ worker, started before its registration."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X") or not _looks_like_worker(_cmdline(pid)):
        return False
    started = _started_at(fields)
    return started is None or birth is None or started <= birth.timestamp() + 5  # a reused pid starts later


def _orphan_horses(known_workers: set[int]):
    """Work-horses on this host whose worker has died, as far as /proc tells.

    A horse is an RQ process that leads its own process group (RQ's horse calls setpgrp) but not its own
    session (a worker started by `serve` or systemd does), is no registered worker of this Redis, and
    whose parent is not an RQ worker (a live worker's horse has its worker as parent). Never this process.
    """
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or pid in known_workers:
            continue
        fields = _stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        ppid, pgrp, session = int(fields[1]), int(fields[2]), int(fields[3])
        if pgrp != pid or session == pid or not _looks_like_worker(_cmdline(pid)):
            continue
        if not _looks_like_worker(_cmdline(ppid)):
            yield pid
