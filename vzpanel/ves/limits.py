"""A plan's limits onto existing VEs: set one VE's limits live, apply a plan to a VE or to users' VEs."""

from dataclasses import dataclass, field

from django.db import transaction

from vzpanel.audit import log as audit
from vzpanel.tasks import queue
from vzpanel.tasks.models import Task

from .errors import ActionRefused, Forbidden, InvalidRequest, ServiceError
from .guards import new_task
from .models import VE

# Setting a VE's limits (its plan's) live: admins only, so not one of request_action's actions.
SET_LIMITS = Task.Action.SET_LIMITS
# A stopped VE gets them in its config; a suspended one is left alone: its resume restores the memory it
# held under the old limits (apply them once it runs again).
SET_LIMITS_FROM = {VE.Status.RUNNING, VE.Status.STOPPED}
LIMIT_KEYS = ("ram_mb", "swap_mb", "cpus", "disk_gb", "nproc")
LIMIT_MINIMUM = {"ram_mb": 16, "swap_mb": 0, "cpus": 1, "disk_gb": 1, "nproc": 16}




def plan_of(ve: VE):
    """Return the plan of ve's owner, or None (no owner, or an owner without a plan)."""
    return ve.owner.plan if ve.owner_id and ve.owner is not None else None


def limits_of(ve: VE) -> dict:
    """Return the limits stored on ve (the ones in effect), one entry per limit, None where unknown."""
    return {key: (ve.limits or {}).get(key) for key in LIMIT_KEYS}


def limits_differ(ve: VE, plan=None) -> bool:
    """Whether ve's limits are not those of plan (default: its owner's plan); False without a plan."""
    plan = plan if plan is not None else plan_of(ve)
    return plan is not None and limits_of(ve) != plan.limits()


def describe_limits(limits: dict) -> str:
    return (f"{limits.get('ram_mb')} MB RAM, {limits.get('swap_mb')} MB swap, {limits.get('cpus')} CPU(s), "
            f"{limits.get('disk_gb')} GB disk, {limits.get('nproc')} processes")


def clean_limits(limits) -> dict:
    """Return limits with every key of a plan as a whole number, or raise InvalidRequest saying what is wrong."""
    if not isinstance(limits, dict):
        raise InvalidRequest("Limits are RAM, swap, CPUs, disk and processes.")
    unknown = sorted(set(limits) - set(LIMIT_KEYS))
    if unknown:
        raise InvalidRequest(f"Unknown limit(s): {', '.join(unknown)} (known: {', '.join(LIMIT_KEYS)}).")
    out = {}
    for key in LIMIT_KEYS:
        value = limits.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < LIMIT_MINIMUM[key]:
            raise InvalidRequest(f"The limit {key} must be a whole number of at least {LIMIT_MINIMUM[key]} "
                                 f"(got {value!r}).")
        out[key] = value
    return out


def set_limits(user, ve: VE, limits: dict, *, why: str = "", request=None, ip=None) -> Task:
    """Queue setting ve's limits live (admins only); return the Task.

    The job stores them on ve.limits only when the engine took them. A set-limits task of ve still waiting
    in the queue takes the new limits instead of a second task (one active task per VE).
    """
    if not (user.is_panel_admin or (ve.owner_id and ve.owner.reseller_id == user.pk)):  # or its reseller's plan
        raise Forbidden("Only admins can change a VE's limits.")
    limits = clean_limits(limits)
    if ve.status not in SET_LIMITS_FROM:
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; its limits can be changed when it is running or "
                            "stopped (use Apply plan limits on its page then).")
    params = {"limits": limits, "why": why}
    detail = f"{describe_limits(limits)}" + (f" ({why})" if why else "")
    with transaction.atomic():
        queued = ve.tasks.filter(action=SET_LIMITS, status=Task.Status.QUEUED).first()
        # Conditional on still queued: the agent's claim is the same kind of update, so one of them wins.
        if queued is not None and Task.objects.filter(pk=queued.pk, status=Task.Status.QUEUED).update(params=params):
            queued.params = params
            audit.record(f"ve.{SET_LIMITS}", user=user, request=request, ve=ve, task=queued, result="queued",
                         detail=f"queued task {queued.pk} now sets {detail}")
            return queued
        task = new_task(user, ve, SET_LIMITS, params, ip, detail, request)
        queue.enqueue_on_commit(task)
    return task


def apply_plan(user, ve: VE, *, request=None, ip=None) -> Task:
    """Queue setting ve's limits to its owner's plan's, live (admins only); return the Task."""
    if not user.is_panel_admin:
        raise Forbidden("Only admins can apply plan limits.")
    plan = plan_of(ve)
    if plan is None:
        who = f"its owner {ve.owner.get_username()} has no plan" if ve.owner_id else "it has no owner"
        raise InvalidRequest(f"VE {ve.ctid} has no plan limits to apply: {who}.")
    return set_limits(user, ve, plan.limits(), why=f"plan {plan.name}", request=request, ip=ip)


# Other apps may govern some VEs' limits by a plan other than their owner's (the classroom: a student's VE in a
# course that has a plan follows the course's plan). A governor has governed(ves): those of the VE queryset ves
# it governs, and governed_by(plan): the live VEs it governs by plan.
PLAN_GOVERNORS: list = []


def register_plan_governor(governor) -> None:
    if governor not in PLAN_GOVERNORS:
        PLAN_GOVERNORS.append(governor)


def governed_elsewhere(ves) -> set[int]:
    """The pks of those of ves whose limits a registered governor's plan sets, not their owner's."""
    return {pk for governor in PLAN_GOVERNORS for pk in governor.governed(ves).values_list("pk", flat=True)}


@dataclass
class PlanChange:
    """What applying plans to users' VEs did, for the admin who changed the plan."""

    tasks: list = field(default_factory=list)  # set-limits tasks queued (or queued ones updated)
    unchanged: int = 0  # VEs that already had their plan's limits
    skipped: list = field(default_factory=list)  # why some VEs got no task
    over_quota: list = field(default_factory=list)  # users with more VEs than their plan allows


def apply_plans(user, owners, *, limits: bool = True, plan=None, request=None, ip=None) -> PlanChange:
    """Queue each live VE of owners whose limits differ from its plan's; note owners over their plan.

    A VE's plan is its owner's, except for one a registered governor holds (PLAN_GOVERNORS: the classroom's
    student VEs follow their course's plan). When `plan` was edited, every VE it governs is queued: its
    users' and those its governors name. Nothing is destroyed: an owner with more VEs than the plan allows is
    only reported. With limits=False, only that count is checked (a plan edit that changed how many VEs
    it allows but no limit).
    """
    change = PlanChange()
    done: set[int] = set()

    def queue_ve(ve: VE, governing) -> None:
        done.add(ve.pk)
        if not limits_differ(ve, governing):
            change.unchanged += 1
            return
        try:
            change.tasks.append(set_limits(user, ve, governing.limits(), why=f"plan {governing.name}",
                                           request=request, ip=ip))
        except ServiceError as exc:
            change.skipped.append(exc.message)

    for owner in owners:
        own_plan = owner.plan
        ves = list(VE.objects.live().filter(owner=owner).select_related("owner", "node").order_by("ctid"))
        in_course = governed_elsewhere(VE.objects.live().filter(owner=owner))
        if own_plan is None:
            if ves and limits and len(in_course) < len(ves):
                change.skipped.append(f"{owner.get_username()} has no plan now: their {len(ves) - len(in_course)} "
                                      "VE(s) keep the limits they have.")
            continue
        if len(ves) > own_plan.max_ves:
            change.over_quota.append(
                f"{owner.get_username()} has {len(ves)} VEs but plan {own_plan.name} allows {own_plan.max_ves}. "
                f"Nothing was destroyed; they can create VEs again once they have fewer than {own_plan.max_ves}."
            )
        if not limits:
            continue
        for ve in ves:
            if ve.pk in in_course:
                continue  # another plan governs it (a course's), not its owner's
            ve.owner = owner  # the plan just saved, not a cached copy
            queue_ve(ve, own_plan)
    if plan is not None and limits:
        for governor in PLAN_GOVERNORS:
            for ve in (governor.governed_by(plan).exclude(pk__in=done).distinct().select_related("owner", "node")
                       .order_by("ctid")):
                queue_ve(ve, plan)
    return change
