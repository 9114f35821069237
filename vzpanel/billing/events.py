"""Webhook events from what already happens: a VE row's saves (status, lock) and every task's end.

Connected in BillingConfig.ready. A VE row remembers the status and lock it was loaded with (post_init), so a
save that changes them (the task jobs, reconcile, billing) says which event it was. Rows changed by
QuerySet.update() announce nothing; the panel saves VE rows one by one where their state changes.
"""

import logging

from django.db.models.signals import post_init, post_save

from vzpanel.tasks.runner import register_finish_hook
from vzpanel.ves.models import VE

from .webhooks import send

FAILED = ("failed", "errored")
UNKNOWN = object()  # a deferred field: what it was is not known, so its change is not announced
log = logging.getLogger(__name__)


def ve_data(ve: VE) -> dict:
    return {"ctid": ve.ctid, "hostname": ve.hostname, "status": ve.status, "ostemplate": ve.ostemplate,
            "owner": ve.owner.get_username() if ve.owner_id and ve.owner else None, "node": ve.node.name,
            "ip_addresses": list(ve.ip_addresses or []), "locked": ve.locked}


def remember(sender, instance: VE, **kwargs) -> None:
    # from __dict__: a row loaded with .only() must not cost a query per row here
    fields = instance.__dict__
    instance._seen = (fields.get("status", UNKNOWN), fields.get("locked", UNKNOWN)) if instance.pk else (None, "")


def announce(sender, instance: VE, created: bool, **kwargs) -> None:
    before_status, before_lock = getattr(instance, "_seen", (None, ""))
    status, lock = instance.status, instance.locked
    instance._seen = (status, lock)
    events = []
    if status != before_status and before_status is not UNKNOWN:
        if status == VE.Status.DESTROYED:
            if before_status not in (None, VE.Status.CREATING):  # one that never was is no news
                events.append(("ve.destroyed", {}))
        elif status == VE.Status.CREATING:
            pass
        elif before_status in (None, VE.Status.CREATING):
            events.append(("ve.created", {}))
        else:
            events.append(("ve.status_changed", {"previous_status": before_status}))
    if lock != before_lock and before_lock is not UNKNOWN and not created:
        events.append(("ve.locked", {"reason": lock}) if lock else ("ve.unlocked", {"previous_reason": before_lock}))
    for event, extra in events:
        try:
            send(event, {"ve": ve_data(instance), **extra})
        except Exception:  # telling the outside world never fails the change itself
            log.exception("webhook %s of VE %s not sent", event, instance.ctid)


def task_finished(task) -> None:
    if task.status == "completed":
        event = "task.succeeded"
    elif task.status in FAILED:
        event = "task.failed"
    else:
        return
    send(event, {"task": {"id": task.pk, "action": task.action, "status": task.status,
                          "ve": task.ve.ctid if task.ve_id and task.ve else None, "message": task.message,
                          "error": task.error, "error_ref": task.error_ref,
                          "user": task.user.get_username() if task.user_id and task.user else None,
                          "created_at": task.created_at, "finished_at": task.finished_at}})


def connect() -> None:
    post_init.connect(remember, sender=VE, dispatch_uid="billing-ve-remember")
    post_save.connect(announce, sender=VE, dispatch_uid="billing-ve-announce")
    register_finish_hook(task_finished)
