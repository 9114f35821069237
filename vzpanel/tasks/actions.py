"""The one registry of task actions: what runs for each action name, what it is called, whether it makes a VE.

vzpanel.tasks.jobs registers a VE's own actions (create, start, ...), vzpanel.ves.storage_jobs its snapshots and
backups; other apps register theirs in their AppConfig.ready (the classroom's per-student actions, `student.*`),
so every task, whoever queued it, is run by vzpanel.tasks.runner.execute from this one table, and one action name
means one thing.
"""

from __future__ import annotations

from collections.abc import Callable

HANDLERS: dict[str, Callable] = {}
LABELS: dict[str, str] = {}
# Actions whose VE row exists only to be built: if the task fails or is cancelled before the engine has the
# VE, the row is marked destroyed (its quota given back).
CREATES_VE: set[str] = set()
# closer(parent task) -> whether it closed it: apps whose actions have children (the classroom's bulk
# jobs) end such a parent their own way when the sweeper finds its children all ended.
PARENT_CLOSERS: list[Callable] = []


def register_parent_closer(closer: Callable) -> None:
    if closer not in PARENT_CLOSERS:
        PARENT_CLOSERS.append(closer)


def register(name: str, handler: Callable, label: str = "", creates_ve: bool = False) -> None:
    """Make ``handler(task, progress, engine, **secrets)`` the one handler of action ``name``."""
    if name in HANDLERS and HANDLERS[name] is not handler:
        raise ValueError(f"task action {name!r} is registered twice")
    HANDLERS[name] = handler
    if label:
        LABELS[name] = label
    if creates_ve:
        CREATES_VE.add(name)
