"""A VE's row kept in step with what its engine reports, and the panel's limits in the engine's words.

Used by every task handler that changes a VE (vzpanel.tasks.jobs, the snapshot and backup jobs, the
classroom's) and by the reconcile job.
"""

import os

from django.utils import timezone

from vzpanel.tasks.queue import publish

from .models import VE


def save_info(ve: VE, info) -> None:
    """Store what the engine reports about ve and tell its watchers."""
    changed = ve.apply_info(info)
    if changed:
        ve.save(update_fields=[*changed, "updated_at"])
    publish_ve(ve)


def publish_ve(ve: VE) -> None:
    publish(ve.group_name, "ve.update", {"ctid": ve.ctid, "status": ve.status})


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


def mark_destroyed(ve: VE) -> None:
    ve.status = VE.Status.DESTROYED
    ve.destroyed_at = timezone.now()
    ve.save(update_fields=["status", "destroyed_at", "updated_at"])
    publish_ve(ve)
