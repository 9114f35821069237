"""What other apps do when a console opens. The console knows no app by name: the classroom registers a hook
that wakes a class VE its idle policy put to sleep (vzpanel.classroom.apps)."""

from __future__ import annotations

from collections.abc import Callable

from vzpanel.tasks.models import Task

# hook(user, ve) -> the task the console should wait for before attaching (a VE being woken), or None.
OPENING: list[Callable] = []


def register_opening(hook: Callable) -> None:
    if hook not in OPENING:
        OPENING.append(hook)


def opening(user, ve) -> list[int]:
    """Run every hook; return the ids of the tasks still to finish before the console attaches."""
    tasks = [hook(user, ve) for hook in OPENING]
    return [t.pk for t in tasks if t is not None and t.status not in Task.FINISHED]


def unfinished(task_ids: list[int]) -> list[int]:
    return list(Task.objects.filter(pk__in=task_ids).exclude(status__in=Task.FINISHED).values_list("pk", flat=True))
