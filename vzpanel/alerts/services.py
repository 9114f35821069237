"""Evaluate the alert rules for a node after each reconcile, and tell the people concerned.

Bounded queries per pass whatever the number of VEs: the node's live VEs (with owners, plans and their
thresholds), the open alerts, the last pass's states, the tasks since the last pass.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from vzpanel.nodes.models import Node
from vzpanel.nodes.status import nodes_up
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

from . import rules
from .models import Alert, AlertPreference, Thresholds, VEAlertState

log = logging.getLogger("vzpanel.alerts")


def visible_alerts(user):
    """The alerts user may see: admins every one; others those of the VEs they may see."""
    if user.is_panel_admin:
        return Alert.objects.all()
    return Alert.objects.filter(ve__in=VE.objects.visible_to(user))


def _thresholds(ves: list[VE]) -> dict[int, tuple[int, int]]:
    plan_ids = {ve.owner.plan_id for ve in ves if ve.owner is not None and ve.owner.plan_id}
    rows = Thresholds.objects.filter(Q(plan_id__in=plan_ids) | Q(ve__in=ves))
    by_plan = {t.plan_id: t for t in rows if t.plan_id}
    by_ve = {t.ve_id: t for t in rows if t.ve_id}
    out = {}
    for ve in ves:
        t = by_ve.get(ve.pk) or (by_plan.get(ve.owner.plan_id) if ve.owner is not None else None)
        out[ve.pk] = (t.memory_percent, t.disk_percent) if t else (rules.DEFAULT_MEMORY_PERCENT,
                                                                    rules.DEFAULT_DISK_PERCENT)
    return out


def evaluate(node_name: str, now=None) -> dict:
    """One pass over node_name's VEs and the node itself; return how many alerts fired and resolved."""
    now = now or timezone.now()
    node = Node.objects.filter(name=node_name).first()
    if node is None:
        return {"fired": 0, "resolved": 0}
    changed: list[tuple[str, Alert]] = []
    with transaction.atomic():
        open_alerts = {(a.ve_id, a.node_id, a.kind): a for a in
                       Alert.objects.filter(resolved_at__isnull=True).filter(Q(ve__node=node) | Q(node=node))}

        def decide(kind: str, condition: bool, message: str, ve: VE | None = None) -> None:
            key = (ve.pk if ve else None, None if ve else node.pk, kind)
            alert = open_alerts.get(key)
            act = rules.step(alert is not None, condition)
            if act == "fire":
                alert = Alert.objects.create(kind=kind, ve=ve, node=None if ve else node, since=now,
                                             message=message[:300] or rules.KINDS[kind])
                changed.append(("alert.fired", alert))
            elif act == "resolve":
                alert.resolved_at = now
                alert.save(update_fields=["resolved_at"])
                changed.append(("alert.resolved", alert))

        silent_for = (now - node.last_seen_at).total_seconds() if node.last_seen_at else None
        down = node.name not in nodes_up([node.name]) and (silent_for is None or silent_for > rules.NODE_DOWN_AFTER)
        decide("node_down", down, f"the node agent of {node.name} is not answering")

        ves = list(VE.objects.live().filter(node=node).select_related("owner"))
        limits = _thresholds(ves)
        states = {s.ve_id: s for s in VEAlertState.objects.filter(ve__in=ves)}
        since = min((s.at for s in states.values()), default=now)
        asked: dict[int, list] = {}  # VE -> when the panel was asked to do something to it since the oldest state
        for ve_id, at in Task.objects.filter(ve__in=ves, created_at__gte=since).values_list("ve_id", "created_at"):
            asked.setdefault(ve_id, []).append(at)
        for ve in ves:
            state = states.get(ve.pk)
            last = dict(state.seen) if state else {}
            last["stopped_alone"] = (ve.pk, None, "stopped") in open_alerts
            usage = ve.usage or {}
            memory_percent, disk_percent = limits[ve.pk]
            asked_since_last = any(at >= state.at for at in asked.get(ve.pk, ())) if state else ve.pk in asked
            conds = rules.conditions(usage, last, ve.status, last.get("status"), asked_since_last,
                                     memory_percent, disk_percent)
            for kind, (condition, message) in conds.items():
                decide(kind, condition, f"VE {ve.ctid}: {message}", ve)
            seen = {"status": ve.status, "failcnt": rules.failcnt(usage) if usage else None,
                    "oom": usage.get("oom_kills") if usage else None}
            if state is None:
                VEAlertState.objects.create(ve=ve, seen=seen, at=now)
            elif state.seen != seen or state.at < now - timedelta(minutes=10):
                state.seen, state.at = seen, now
                state.save(update_fields=["seen", "at"])
    for event, alert in changed:
        tell(event, alert)
    return {"fired": sum(e == "alert.fired" for e, _ in changed),
            "resolved": sum(e == "alert.resolved" for e, _ in changed)}


def recipients(alert: Alert) -> list:
    """Who hears of an alert: a VE's owner, or the admins for a node."""
    if alert.ve_id:
        return [alert.ve.owner] if alert.ve.owner is not None and alert.ve.owner.is_active else []
    users = get_user_model().objects.filter(is_active=True)
    return list(users.filter(Q(role="admin") | Q(is_superuser=True)))


def tell(event: str, alert: Alert) -> None:
    """E-mail the people concerned (as they chose) and send the signed webhook; a failure is logged, not raised."""
    what = "resolved" if event == "alert.resolved" else "firing"
    subject = f"[vzpanel] {what}: {alert.get_kind_display()} ({alert.subject})"
    body = (f"{alert.message}\n\nSince {alert.since:%Y-%m-%d %H:%M:%S} UTC"
            + (f", resolved {alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC" if alert.resolved_at else "") + ".\n")
    users = recipients(alert)
    prefs = {p.user_id: p for p in AlertPreference.objects.filter(user__in=users)}
    for user in users:
        pref = prefs.get(user.pk) or AlertPreference(user=user)
        if not user.email or not pref.wants(alert.kind):
            continue
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
        except Exception:  # a mail server that is down must not stop the alerts
            log.exception("could not e-mail %s about alert %s", user.email, alert.pk)
    try:
        from vzpanel.billing.webhooks import send

        send(event, payload(alert))
    except Exception:
        log.exception("could not queue the webhook of alert %s", alert.pk)


def payload(alert: Alert) -> dict:
    return {"alert": alert.pk, "kind": alert.kind, "message": alert.message,
            "ve": alert.ve.ctid if alert.ve_id else None, "node": alert.node.name if alert.node_id else None,
            "since": alert.since.isoformat(), "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at
            else None}
