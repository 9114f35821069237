"""What each task action does on the node: the only place the panel calls the engine.

These run inside the node agent (root); the web process never calls them.
"""

import logging
import os

from django.utils import timezone

from vzpanel.ves.models import VE

from .errors import TaskFailed
from .models import Task
from .queue import publish

log = logging.getLogger(__name__)


def engine():
    """Return the node's engine (root from $VZ_ROOT); the agent waits a while for a VE's lock."""
    from vzengine import Engine

    return Engine(lock_wait=60)


def engine_method(eng, name: str):
    """Return eng.<name>, or fail the task in plain words if this engine lacks it."""
    method = getattr(eng, name, None)
    if method is None:
        raise TaskFailed(f"This node's engine cannot {name.replace('_', ' ')} VEs yet.")
    return method


def save_info(ve: VE, info) -> None:
    """Store what the engine reports about ve and tell its watchers."""
    changed = ve.apply_info(info)
    if changed:
        ve.save(update_fields=[*changed, "updated_at"])
    publish_ve(ve)


def publish_ve(ve: VE) -> None:
    publish(ve.group_name, "ve.update", {"ctid": ve.ctid, "status": ve.status})


def root_passwd(root_password):
    return [("root", root_password)] if root_password else None


def engine_limits(limits: dict) -> dict:
    """Turn a plan's limits, as stored on the VE, into the engine's resource parameters."""
    names = {"ram_mb": ("ram", "M"), "swap_mb": ("swap", "M"), "disk_gb": ("diskspace", "G"),
             "cpus": ("cpus", ""), "nproc": ("numproc", "")}
    out = {}
    for key, (param, unit) in names.items():
        if limits.get(key) not in (None, ""):
            out[param] = f"{limits[key]}{unit}"
    if "ram" not in out:
        out.pop("swap", None)  # swap is on top of a RAM limit
    if "cpus" in out:  # a plan is the same on every node; a node gives at most what it has
        out["cpus"] = str(min(int(limits["cpus"]), os.cpu_count() or 1))
    return out


def do_create(task, progress, eng, root_password=None):
    ve, params = task.ve, task.params
    info = eng.create(
        ve.ctid,
        params["ostemplate"],
        hostname=params.get("hostname") or None,
        userpasswd=root_passwd(root_password),
        progress=progress,
        **engine_limits(ve.limits or {}),
    )
    save_info(ve, info)
    if params.get("start"):
        info = eng.start(ve.ctid, progress=progress)
        save_info(ve, info)
    return info.to_dict()


def do_start(task, progress, eng):
    return eng.start(task.ve.ctid, progress=progress)


def do_stop(task, progress, eng):
    return eng.stop(task.ve.ctid, progress=progress)


def do_restart(task, progress, eng):
    return eng.restart(task.ve.ctid, progress=progress)


def do_reinstall(task, progress, eng, root_password=None):
    info = engine_method(eng, "reinstall")(
        task.ve.ctid, ostemplate=task.params.get("ostemplate") or None, progress=progress
    )
    if root_password:
        info = eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)
    return info


def do_set_password(task, progress, eng, root_password=None):
    if not root_password:
        raise TaskFailed("No password was given.")
    return eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)


def do_set_hostname(task, progress, eng):
    return eng.set(task.ve.ctid, hostname=task.params["hostname"], progress=progress)


def do_set_limits(task, progress, eng):
    """Set the VE's limits live (all or none: the engine undoes a half-applied change); store them if taken."""
    ve, limits = task.ve, task.params.get("limits")
    if not isinstance(limits, dict) or not limits:
        raise TaskFailed("The task names no limits to set.")
    if getattr(eng, "is_suspended", None) and eng.is_suspended(ve.ctid):
        raise TaskFailed(f"VE {ve.ctid} is suspended; its limits can be changed once it runs again.")
    params = engine_limits(limits)
    progress(10, "Setting " + ", ".join(f"{name} {value}" for name, value in params.items()))
    info = eng.set(ve.ctid, save=True, progress=progress, **params)  # refusals raise VZError: the task fails
    ve.limits = dict(limits)
    ve.save(update_fields=["limits", "updated_at"])
    return info


def do_destroy(task, progress, eng):
    ve = task.ve
    eng.destroy(ve.ctid, progress=progress)
    mark_destroyed(ve)
    return {"ctid": ve.ctid, "destroyed": True}


HANDLERS = {
    Task.Action.CREATE: do_create,
    Task.Action.START: do_start,
    Task.Action.STOP: do_stop,
    Task.Action.RESTART: do_restart,
    Task.Action.REINSTALL: do_reinstall,
    Task.Action.SET_PASSWORD: do_set_password,
    Task.Action.SET_HOSTNAME: do_set_hostname,
    Task.Action.DESTROY: do_destroy,
    Task.Action.SET_LIMITS: do_set_limits,
}


def run(task: Task, progress, **secrets):
    """Run task's action on the engine; return a JSON-able result."""
    handler = HANDLERS[task.action]  # an unknown action is a bug: KeyError makes the task errored
    result = handler(task, progress, engine(), **secrets)
    if hasattr(result, "to_dict"):  # a VEInfo
        save_info(task.ve, result)
        result = result.to_dict()
    return result


def mark_destroyed(ve: VE) -> None:
    ve.status = VE.Status.DESTROYED
    ve.destroyed_at = timezone.now()
    ve.save(update_fields=["status", "destroyed_at", "updated_at"])
    publish_ve(ve)


def after_failure(task: Task) -> None:
    """Bring the VE row in line with the engine after a failed action (best effort)."""
    ve = task.ve
    if ve is None or not ve.is_live:
        return
    try:
        from vzengine import NotFound

        eng = engine()
        try:
            save_info(ve, eng.status(ve.ctid))
        except NotFound:
            if task.action == Task.Action.CREATE:
                mark_destroyed(ve)  # never built: give the quota back
            else:
                ve.status = VE.Status.MISSING
                ve.save(update_fields=["status", "updated_at"])
                publish_ve(ve)
    except Exception:
        log.warning("could not refresh VE %s after task %s", ve.ctid, task.pk, exc_info=True)
