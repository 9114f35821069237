"""Resellers: who they see, and their quota over all their customers' live VEs.

A reseller's customers are the users whose `reseller` is it (accounts.User.reseller); its plans are the plans
it owns (plans.Plan.owner). It sees and acts on its customers' VEs as their owners may (a VE rule registered in
ResellersConfig.ready), and every change that takes resources for one of its customers (a new VE, another
plan, new plan values, one more address) is checked against its quota (`check`, registered as one of
ves.services.QUOTA_CHECKS): refused in words, with nothing changed, when it does not fit.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404

from vzpanel.accounts.models import User
from vzpanel.nodes.models import IPAddress
from vzpanel.plans.models import Plan
from vzpanel.ves.models import VE
from vzpanel.ves.services import QuotaExceeded

from . import quota as q
from .models import ResellerQuota

RESELLER = User.Role.RESELLER
_KEEP = object()  # "the owner's own plan" in the overrides of taken()


def is_reseller(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.role == RESELLER)


def ve_rule(user):
    """The VE rule of resellers: a reseller sees its customers' VEs (see VEQuerySet.visible_to)."""
    return Q(owner__reseller=user) if user.role == RESELLER else None


# --- what belongs to a reseller ---------------------------------------------------------------------------

def customers_of(reseller):
    return User.objects.filter(reseller=reseller)


def plans_of(reseller):
    return Plan.objects.filter(owner=reseller)


def get_customer_or_404(reseller, pk) -> User:
    """Return reseller's customer pk; anyone else's user (an admin, another reseller's customer) is a 404."""
    try:
        return customers_of(reseller).select_related("plan").get(pk=int(pk))
    except (User.DoesNotExist, ValueError, TypeError):
        raise Http404("No such customer.") from None


def get_plan_or_404(reseller, pk) -> Plan:
    try:
        return plans_of(reseller).get(pk=int(pk))
    except (Plan.DoesNotExist, ValueError, TypeError):
        raise Http404("No such plan.") from None


def audit_entries(reseller):
    """Return the audit entries a reseller may read: its own, its customers', and those about their VEs."""
    from vzpanel.audit.models import AuditEntry

    return AuditEntry.objects.filter(Q(user=reseller) | Q(user__reseller=reseller) | Q(ve__owner__reseller=reseller))


# --- the quota --------------------------------------------------------------------------------------------

def per_ve(plan) -> q.PerVE:
    """What plan gives each VE, as the quota counts it (no plan: nothing)."""
    if plan is None:
        return q.PerVE()
    return q.PerVE(ram_mb=plan.ram_mb, disk_gb=plan.disk_gb, ipv4=plan.ipv4_addresses, ipv6=plan.ipv6_addresses)


def limit_of(reseller) -> q.Amounts:
    """Return the reseller's quota (none set yet: nothing at all)."""
    row = ResellerQuota.objects.filter(reseller=reseller).first()
    return row.amounts() if row is not None else q.Amounts()


def taken(reseller, *, owner_plans: dict | None = None, plans: dict | None = None) -> q.Amounts:
    """Return what the reseller's customers' live VEs take, each by its owner's plan.

    owner_plans {owner pk: plan} and plans {plan pk: plan with other values} say what it would be after a change.
    A VE whose owner has no plan counts its stored limits.
    """
    owner_plans, plans = owner_plans or {}, plans or {}
    ves = list(VE.objects.live().filter(owner__reseller=reseller).select_related("owner__plan"))
    held: dict[tuple[int, int], int] = {
        (row["ve"], row["pool__version"]): row["n"]
        for row in IPAddress.objects.filter(ve__in=[ve.pk for ve in ves]).values("ve", "pool__version")
        .annotate(n=Count("pk"))}
    items = []
    for ve in ves:
        plan = owner_plans.get(ve.owner_id, _KEEP)
        plan = ve.owner.plan if plan is _KEEP else plan
        plan = plans.get(plan.pk, plan) if plan is not None else None
        one = per_ve(plan) if plan is not None else q.PerVE(ram_mb=(ve.limits or {}).get("ram_mb") or 0,
                                                            disk_gb=(ve.limits or {}).get("disk_gb") or 0)
        items.append(q.ve_amounts(one, held.get((ve.pk, 4), 0), held.get((ve.pk, 6), 0)))
    return q.total(items)


def refuse_beyond(reseller, used: q.Amounts, asked: q.Amounts) -> None:
    """Raise QuotaExceeded naming each resource asked beyond the reseller's quota (which, how much used, asked)."""
    problems = q.refusals(limit_of(reseller), used, asked)
    if problems:
        raise QuotaExceeded(f"Beyond the quota of reseller {reseller.get_username()}: "
                            + " ".join(p.message for p in problems) + " Nothing was changed.")


def _lock(reseller) -> None:
    """Serialise quota checks per reseller (the row lock on PostgreSQL; SQLite's transactions are serial).
    Outside a transaction (a page asking whether a VE could be made) there is nothing to hold."""
    if not transaction.get_autocommit():
        User.objects.select_for_update().filter(pk=reseller.pk).first()


def reseller_of(user):
    return user.reseller if user is not None and user.reseller_id else None


def check(kind: str, **what) -> None:
    """The resellers' quota check (ves.services.QUOTA_CHECKS): refuse a change for a reseller's customer that
    does not fit its quota. Changes for anyone else pass."""
    if kind == "new_ve":
        reseller = reseller_of(what["owner"])
        if reseller is not None:
            _lock(reseller)
            refuse_beyond(reseller, taken(reseller), q.ve_amounts(per_ve(what["plan"])))
    elif kind == "owner_plan":
        owner, plan = what["owner"], what["plan"]
        reseller = reseller_of(owner)
        if reseller is not None and owner.pk is not None:
            used = taken(reseller)
            refuse_beyond(reseller, used, taken(reseller, owner_plans={owner.pk: plan}) - used)
    elif kind == "plan":
        plan = what["plan"]
        if plan.pk is None:
            return
        for reseller in User.objects.filter(customers__plan=plan.pk).distinct():
            used = taken(reseller)
            refuse_beyond(reseller, used, taken(reseller, plans={plan.pk: plan}) - used)
    elif kind == "address":
        ve, version = what["ve"], int(what["version"])
        reseller = reseller_of(ve.owner) if ve.owner_id else None
        if reseller is not None:
            _lock(reseller)
            one = per_ve(ve.owner.plan)
            have = {v: IPAddress.objects.filter(ve=ve, pool__version=v).count() for v in (4, 6)}
            after = {v: have[v] + (v == version) for v in (4, 6)}
            refuse_beyond(reseller, taken(reseller),
                          q.ve_amounts(one, after[4], after[6]) - q.ve_amounts(one, have[4], have[6]))


def usage_rows(reseller) -> list[dict]:
    """The reseller's quota for a page: each resource with its limit, what is in use and what is left."""
    limit, used = limit_of(reseller), taken(reseller)
    rows = []
    for name, (label, unit) in q.RESOURCES.items():
        cap, have = getattr(limit, name), getattr(used, name)
        rows.append({"name": name, "label": label, "unit": unit, "limit": cap, "used": have,
                     "left": max(cap - have, 0), "over": have > cap,
                     "percent": min(100, round(100 * have / cap)) if cap else (100 if have else 0)})
    return rows
