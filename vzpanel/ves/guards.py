"""What every VE task passes: the guards other apps register, the lock, the quota checks; and new_task,
the one place a VE's Task row is made (pages, API, hosting, firewall and restores alike)."""

from django.db import IntegrityError, transaction

from vzpanel.audit import log as audit
from vzpanel.tasks.models import Task

from .errors import ActionRefused
from .models import VE


def new_task(user, ve: VE, action: str, params: dict, ip: str | None, audit_detail: str = "", request=None):
    """Make ve's Task for action (refused when ve is locked or busy) and audit it; the caller enqueues it."""
    why = refuse_if_locked(user, ve, action)  # every task of a VE is made here: hosting and firewall ones too
    if not why:  # a node that stopped answering would never run it (vzpanel.ves.nodestate says why)
        from .nodestate import refusal

        why = refusal(ve)
    if why:
        raise ActionRefused(why)
    ip = ip or audit.client_ip(request)
    try:
        with transaction.atomic():
            task = Task.objects.create(ve=ve, node=ve.node, action=action, params=params, user=user, ip=ip)
    except IntegrityError:
        raise ActionRefused(busy_message(ve)) from None
    audit.record(f"ve.{action}", user=user, request=request, ve=ve, task=task, result="queued", detail=audit_detail)
    return task


def busy_message(ve: VE) -> str:
    active = ve.tasks.filter(status__in=Task.ACTIVE).first()
    what = f" ({active.get_action_display()}, task {active.pk})" if active else ""
    return f"VE {ve.ctid} is busy with another task{what}; wait for it to finish or cancel it."


# Other apps may refuse an action for reasons of their own (the classroom: a student may not start the VE
# of a course that has ended). A guard is called as guard(user, ve, action) and returns why not, or "".
ACTION_GUARDS: list = []


def register_guard(guard) -> None:
    if guard not in ACTION_GUARDS:
        ACTION_GUARDS.append(guard)


# A locked VE (VE.locked says why: suspended by billing, over its traffic) is out of its owner's hands until an
# admin or the system that locked it unlocks it: they may still stop or destroy it, nothing else. Generic: it
# knows no locker. System tasks (no user) and admins pass.
LOCK_ALLOWS = {Task.Action.STOP, Task.Action.DESTROY}


def refuse_if_locked(user, ve: VE, action: str) -> str:
    """Return why user may not do action to ve because ve is locked, or "" (guard; also the console's check)."""
    if not ve.locked or action in LOCK_ALLOWS or user is None or user.is_panel_admin:
        return ""
    return f"VE {ve.ctid} is locked: {ve.locked}. Only an admin can unlock it."


register_guard(refuse_if_locked)


# Other apps may hold a change that takes resources to a quota beyond the owner's plan (resellers: all their
# customers' VEs together). A check is called as check(kind, **what) and raises QuotaExceeded saying why:
# "new_ve" (owner, plan), "owner_plan" (owner, plan: the owner's next plan), "plan" (plan: a plan with its
# new, unsaved values), "address" (ve, version: one more address).
QUOTA_CHECKS: list = []


def register_quota_check(check) -> None:
    if check not in QUOTA_CHECKS:
        QUOTA_CHECKS.append(check)


def check_quotas(kind: str, **what) -> None:
    """Ask every registered quota check whether the change fits; raise QuotaExceeded when one says no."""
    for check in QUOTA_CHECKS:
        check(kind, **what)
