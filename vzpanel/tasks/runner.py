"""Run a task in the task worker: claim it, run its job, end it completed, failed or errored."""

import logging
import traceback

from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from vzpanel.agent.client import VEInfo
from vzpanel.agent.errors import AgentError
from vzpanel.audit import log as audit

from .errors import TaskFailed
from .models import Task
from .queue import new_ref, publish_task

log = logging.getLogger(__name__)

# Other apps may act on every task's end (billing's webhooks): hook(task) is called once the final row is
# written; a hook's failure is logged, never the task's.
FINISH_HOOKS: list = []


def register_finish_hook(hook) -> None:
    if hook not in FINISH_HOOKS:
        FINISH_HOOKS.append(hook)


def expected_errors() -> tuple[type[Exception], ...]:
    """Return the exception types that mean 'failed, and here is why' rather than a bug."""
    return (TaskFailed, AgentError)


class Progress:
    """The progress(percent, message) callable the engine calls; writes the row and pushes it."""

    def __init__(self, task: Task):
        self.task = task

    def __call__(self, percent: int | None, message: str = "") -> None:
        task = self.task
        if percent is not None:
            task.progress = max(0, min(100, int(percent)))
        message = str(message or "").strip()
        updates = {"progress": task.progress}
        if message:
            line = f"[{timezone.localtime():%H:%M:%S}] {message}\n"
            task.message = message[:300]
            task.log += line
            task.log_lines += 1
            updates.update(message=task.message, log=Concat(F("log"), Value(line)), log_lines=F("log_lines") + 1)
        Task.objects.filter(pk=task.pk).update(**updates)
        publish_task(task)

    def flush(self) -> None:
        """Nothing waits: every step was written and pushed as it came (BufferedProgress collects instead)."""


def run_task(task_id: int, **secrets) -> str:
    """Run the task with this id, unless it was cancelled or is already taken (the RQ job of a single task)."""
    return execute(task_id, **secrets)


def execute(task_id: int, make_progress=Progress, **secrets) -> str:
    """Claim the task with this id, run its action's handler, end it completed, failed or errored.

    The one pipeline of every task, a VE's own and a class's children alike: the handler comes from the one
    registry of actions (vzpanel.tasks.actions), ``make_progress`` makes the progress callable (live, or
    buffered for a class of many). A task someone else claimed, or that was cancelled, is left alone.
    """
    from . import actions, jobs

    claimed = Task.objects.filter(pk=task_id, status=Task.Status.QUEUED).update(
        status=Task.Status.RUNNING, started_at=timezone.now(), message="Started"
    )
    if not claimed:
        return "not claimed"
    task = Task.objects.select_related("ve", "node", "user").get(pk=task_id)
    progress = make_progress(task)
    progress(0, "Started on node " + task.node.name)
    try:
        handler = actions.HANDLERS[task.action]  # an unknown action is a bug: the task errors
        result = handler(task, progress, jobs.engine(task.node.name), **secrets)
        if isinstance(result, VEInfo):  # what the engine now says of the VE: onto its row
            jobs.save_info(task.ve, result)
            result = result.to_dict()
    except expected_errors() as exc:
        progress.flush()
        jobs.after_failure(task)
        finish(task, Task.Status.FAILED, error=exc.message or str(exc))  # both expected errors carry one
    except Exception:
        ref = new_ref()
        log.exception("task %s errored (ref %s)", task_id, ref)
        progress.flush()
        jobs.after_failure(task)
        finish(
            task,
            Task.Status.ERRORED,
            error=f"Something went wrong on our side. The administrators can look it up as reference {ref}.",
            error_ref=ref,
            traceback=traceback.format_exc(),
        )
    else:
        progress.flush()
        finish(task, Task.Status.COMPLETED, result=result)
    return task.status


def finish(task: Task, status: str, *, result=None, error="", error_ref="", traceback=""):
    """End task with status and push the outcome."""
    task.status = status
    task.finished_at = timezone.now()
    task.result = result
    task.error = error
    task.error_ref = error_ref
    task.traceback = traceback
    if status == Task.Status.COMPLETED:
        task.progress = 100
        task.message = "Done"
    else:
        task.message = error.splitlines()[0][:300] if error else status
    line = f"[{timezone.localtime():%H:%M:%S}] {status.capitalize()}" + (f": {error}" if error else "") + "\n"
    Task.objects.filter(pk=task.pk).update(
        status=status,
        finished_at=task.finished_at,
        result=result,
        error=error,
        error_ref=error_ref,
        traceback=traceback,
        progress=task.progress,
        message=task.message,
        log=Concat(F("log"), Value(line)),
        log_lines=F("log_lines") + 1,
    )
    task.log += line
    task.log_lines += 1
    audit.task_finished(task)
    publish_task(task)
    for hook in FINISH_HOOKS:
        try:
            hook(task)
        except Exception:
            log.exception("finish hook %r failed for task %s", hook, task.pk)
