"""Enqueue tasks on their node's RQ queue, and push their progress to browsers."""

import logging
import secrets
from functools import cache

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rq import Queue

log = logging.getLogger(__name__)

JOB_TIMEOUT = 3600  # building a full template the first time takes minutes


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def get_redis() -> redis.Redis:
    return _redis(settings.REDIS_URL)


def get_queue(node_name: str) -> Queue:
    """Return the RQ queue of the named node."""
    return Queue(f"node:{node_name}", connection=get_redis())


def new_ref() -> str:
    """Return a short reference admins can search for."""
    return "E" + secrets.token_hex(4).upper()


def enqueue_on_commit(task, **secrets_for_job):
    """Enqueue task's job once the transaction that created the row commits.

    Secrets (a root password) travel in the job's arguments only, never in the database.
    """
    transaction.on_commit(lambda: enqueue(task, **secrets_for_job))


def enqueue(task, **secrets_for_job):
    """Put task on its node's queue now; if the queue is unreachable, end the task as errored."""
    from .models import Task

    job_id = f"task-{task.pk}"
    try:
        get_queue(task.node.name).enqueue(
            "vzpanel.tasks.runner.run_task",
            args=(task.pk,),
            kwargs=secrets_for_job,
            job_id=job_id,
            job_timeout=JOB_TIMEOUT,
            result_ttl=0,
            failure_ttl=3600,
            description=f"{task.action} VE {task.ve.ctid if task.ve_id else '-'} (task {task.pk})",
        )
    except redis.RedisError as exc:
        log.exception("cannot enqueue task %s", task.pk)
        ref = new_ref()
        Task.objects.filter(pk=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.ERRORED,
            error=f"The node agent's queue could not be reached. Reference {ref}.",
            error_ref=ref,
            traceback=repr(exc),
            finished_at=timezone.now(),
        )
        return
    Task.objects.filter(pk=task.pk).update(rq_job_id=job_id)


def cancel_job(task) -> None:
    """Drop task's job from its queue, if it is still there."""
    from rq.job import Job

    try:
        job = Job.fetch(task.rq_job_id or f"task-{task.pk}", connection=get_redis())
        job.cancel()
        job.delete()
    except Exception:
        log.info("job of task %s not cancelled in RQ (already gone?)", task.pk)


def publish(group: str, event_type: str, payload: dict) -> None:
    """Send an event to every browser watching group; never fail the caller over it."""
    try:
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(group, {"type": event_type, "data": payload})
    except Exception:
        log.warning("could not publish to %s", group, exc_info=True)


def publish_task(task) -> None:
    """Push task's current state to its watchers and its VE's watchers."""
    event = task.to_event()
    publish(task.group_name, "task.update", event)
    if task.ve_id:
        publish(f"ve-{task.ve_id}", "task.update", event)
