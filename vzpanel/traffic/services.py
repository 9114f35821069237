"""Metering and the monthly quota: the node's counters become months, and a VE over its quota is cut.

``meter(node, eng, report, now)`` is one pass over a node (the periodic job, `jobs.meter_node`): it adds what
each VE used since the last reading to its months (`accounting`), then for each VE with a quota:

- over it, not yet acted on this month: its plan's ``traffic_over`` — ``throttle`` cuts its rate each way to
  ``traffic_throttle_mbit`` (the engine's --rate, live and saved, never raising a lower rate), ``suspend``
  locks it (``VE.locked`` = "over its monthly traffic until <next month>") and queues a stop (a system task);
- in a new month, or under its quota again (a bigger plan): what was done is undone — the rate it had before
  comes back (unless someone changed it since), the lock goes (only the panel's own traffic lock, never one
  set for another reason, e.g. billing) and a VE that was running when it was stopped is started again.

What was done is remembered on the VE's `TrafficMeter`, so each step is retried at the next pass when the node
or the VE was busy, and a VE an admin let go early is not cut again in the same month.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from dataclasses import dataclass

from django.db import connection, transaction

from vzpanel.agent.errors import AgentError
from vzpanel.agent.errors import NotFound as AgentNotFound
from vzpanel.audit import log as audit
from vzpanel.tasks.models import Task
from vzpanel.ves import services as ve_services
from vzpanel.ves.models import VE

from . import accounting
from .accounting import Reading
from .models import TrafficMeter, TrafficMonth

log = logging.getLogger(__name__)

LOCK_PREFIX = "over its monthly traffic until "
AGENT_TIMEOUT = 120.0  # seconds for one agent call (a rate change waits for a VE another operation holds)
PAST_MONTHS = 12  # shown on the VE page and in the API


def lock_reason(until: datetime.date) -> str:
    return f"{LOCK_PREFIX}{until:%Y-%m-%d}"


def quota_of(ve: VE) -> int:
    """ve's monthly quota in bytes from its owner's plan; 0: unlimited (or no plan)."""
    plan = ve_services.plan_of(ve)
    return accounting.quota_bytes(plan.traffic_gb) if plan is not None else 0


# --- metering --------------------------------------------------------------------------------------------


def read_report(report: dict) -> dict[int, Reading]:
    """The agent's traffic_counters answer as readings by CTID; entries that are not counters are dropped."""
    out = {}
    for key, data in (report or {}).items():
        try:
            out[int(key)] = Reading.from_report(data)
        except (TypeError, ValueError):
            log.warning("ignoring traffic counters for %r: %.200r", key, data)
    return out


def _reading(m: TrafficMeter) -> Reading | None:
    if m.read_at is None:
        return None
    return Reading(m.total_in, m.total_out, m.run, m.run_in, m.run_out)


def record(ves: list[VE], readings: dict[int, Reading], now: datetime.datetime) -> dict[int, TrafficMonth]:
    """Add what each of ves used since its last reading to its months; return this month's rows by VE id.

    One transaction, with the meters locked (PostgreSQL; SQLite's transactions take the write lock at once): two
    passes at the same time (the periodic one and `manage.py traffic`) cannot both count the same bytes.
    """
    with transaction.atomic():
        meters = {m.ve_id: m for m in TrafficMeter.objects.select_for_update().filter(ve__in=[v.pk for v in ves])}
        added = advance(ves, readings, meters, now)
        return add_to_months(ves, readings, added, now)


def advance(ves: list[VE], readings: dict[int, Reading], meters: dict[int, TrafficMeter],
            now: datetime.datetime) -> dict[tuple[int, datetime.date], list[int]]:
    """Move each VE's meter to its new reading; return the bytes [in, out] to add per (VE id, month).

    A VE's first reading counts everything the engine counted for it if it was made this month (all of it
    is this month's), and is only the starting point otherwise (its history before metering began).
    """
    this_month = accounting.month_of(now)
    added: dict[tuple[int, datetime.date], list[int]] = defaultdict(lambda: [0, 0])
    new_meters, changed_meters = [], []
    for ve in ves:
        reading = readings.get(ve.ctid)
        if reading is None:
            continue
        meter = meters.get(ve.pk)
        if meter is None:
            meter = meters[ve.pk] = TrafficMeter(ve=ve)
            new_meters.append(meter)
        else:
            changed_meters.append(meter)
        last = _reading(meter)
        if last is None and accounting.month_of(ve.created_at) == this_month:
            used, since = (reading.total_in, reading.total_out), ve.created_at
        else:
            used, since = accounting.delta(last, reading), meter.read_at
        if any(used):
            for month, n_in, n_out in accounting.split_by_month(*used, since, now):
                added[(ve.pk, month)][0] += n_in
                added[(ve.pk, month)][1] += n_out
        meter.read_at = now
        meter.total_in, meter.total_out = reading.total_in, reading.total_out
        meter.run, meter.run_in, meter.run_out = reading.run, reading.run_in, reading.run_out
    TrafficMeter.objects.bulk_create(new_meters, batch_size=500)
    update_many(TrafficMeter, ["read_at", "total_in", "total_out", "run", "run_in", "run_out"], changed_meters)
    return added


def add_to_months(ves: list[VE], readings: dict[int, Reading], added: dict, now: datetime.datetime) -> dict:
    """Add the bytes to the months' rows (made when missing), with this month's quota; return this month's."""
    from django.utils import timezone

    this_month = accounting.month_of(now)
    quotas = {ve.pk: quota_of(ve) for ve in ves}
    keys = set(added) | {(ve.pk, this_month) for ve in ves if ve.ctid in readings}
    rows = {(r.ve_id, r.month): r for r in TrafficMonth.objects.filter(
        ve__in=[v.pk for v in ves], month__in={month for _, month in keys})}
    new_rows, changed_rows = [], []
    for key in keys:
        ve_id, month = key
        row = rows.get(key)
        if row is None:
            row = rows[key] = TrafficMonth(ve_id=ve_id, month=month, quota_bytes=quotas[ve_id])
            new_rows.append(row)
        elif key in added or (month == this_month and row.quota_bytes != quotas[ve_id]):
            changed_rows.append(row)
        n_in, n_out = added.get(key, (0, 0))
        row.bytes_in += n_in
        row.bytes_out += n_out
        if month == this_month:
            row.quota_bytes = quotas[ve_id]
    TrafficMonth.objects.bulk_create(new_rows, batch_size=500)
    written = timezone.now()
    for row in changed_rows:
        row.updated_at = written
    update_many(TrafficMonth, ["bytes_in", "bytes_out", "quota_bytes", "updated_at"], changed_rows)
    return {ve_id: row for (ve_id, month), row in rows.items() if month == this_month}


def update_many(model, names: list[str], objs: list) -> None:
    """Write fields names of objs, one prepared UPDATE run for all rows (bulk_update's CASE expressions take
    seconds for a thousand rows; this takes milliseconds)."""
    if not objs:
        return
    fields = [model._meta.get_field(n) for n in names]
    pk = model._meta.pk
    q = connection.ops.quote_name
    sql = (f"UPDATE {q(model._meta.db_table)} SET {', '.join(f'{q(f.column)} = %s' for f in fields)} "
           f"WHERE {q(pk.column)} = %s")
    rows = [[f.get_db_prep_save(getattr(o, f.attname), connection) for f in fields] + [o.pk] for o in objs]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


# --- the quota -------------------------------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass over a node did, for the job's result and the tests."""

    read: int = 0
    throttled: int = 0
    locked: int = 0
    lifted: int = 0
    stops: int = 0
    retry: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def meter(node, eng, report: dict, now: datetime.datetime) -> Pass:
    """Meter every live VE of node from the agent's report, then hold each to its quota (module docstring)."""
    readings = read_report(report)
    ves = list(VE.objects.live().filter(node=node).select_related("owner__plan", "node"))
    done = Pass(read=sum(1 for ve in ves if ve.ctid in readings))
    months = record(ves, readings, now)
    busy = set(Task.objects.active().filter(node=node).values_list("ve_id", flat=True))
    meters = {m.ve_id: m for m in TrafficMeter.objects.filter(ve__in=[v.pk for v in ves])}
    for ve in ves:
        m = meters.get(ve.pk)
        if m is None:
            continue
        try:
            enforce(ve, m, months.get(ve.pk), eng, now, busy=ve.pk in busy, done=done)
        except AgentError as exc:
            done.retry += 1
            log.warning("traffic quota of VE %s: %s (again at the next pass)", ve.ctid, exc)
    return done


def enforce(ve: VE, m: TrafficMeter, row: TrafficMonth | None, eng, now: datetime.datetime, *, busy: bool,
            done: Pass) -> None:
    """Hold one VE to its quota: cut it, keep it stopped, or let it go (see the module docstring)."""
    this_month = accounting.month_of(now)
    if m.enforced and (m.enforced_month is None or m.enforced_month < this_month):
        if not busy:
            lift(ve, m, eng, "a new month began")
            done.lifted += 1
        return
    if row is None:
        return  # not in the node's report this time: nothing is known about it now
    over = row.quota_bytes > 0 and row.used_bytes >= row.quota_bytes
    if m.enforced and not over:
        if not busy:
            lift(ve, m, eng, "it is within its quota now")
            done.lifted += 1
        return
    if m.enforced == TrafficMonth.Action.SUSPEND:
        if m.lock_reason and ve.locked != m.lock_reason:  # someone (an admin) let it go this month
            m.enforced, m.lock_reason = "", ""
            m.save(update_fields=["enforced", "lock_reason"])
        elif ve.status == VE.Status.RUNNING and not busy:
            done.stops += stop(ve)
        return
    if m.enforced or not over or m.enforced_month == this_month or busy:
        return
    plan = ve_services.plan_of(ve)
    if plan is None:
        return
    until = accounting.next_month(this_month)
    if plan.traffic_over == TrafficMonth.Action.SUSPEND:
        lock(ve, m, row, until, now)
        done.locked += 1
        done.stops += stop(ve) if ve.status == VE.Status.RUNNING else 0
    else:
        throttle(ve, m, row, plan.traffic_throttle_mbit * 1000, eng, until, now)
        done.throttled += 1


def _over(row: TrafficMonth) -> str:
    return f"{accounting.human_bytes(row.used_bytes)} of {accounting.human_bytes(row.quota_bytes)}"


def throttle(ve: VE, m: TrafficMeter, row: TrafficMonth, kbit: int, eng, until, now) -> None:
    """Cut ve's rate to kbit/s each way (a lower rate of its own stays) until the month ends."""
    result = eng.call("traffic_throttle", ctid=ve.ctid, kbit=kbit, timeout=AGENT_TIMEOUT)
    m.enforced, m.enforced_month = TrafficMonth.Action.THROTTLE, row.month
    m.throttle_kbit = kbit if result.get("changed") else None
    m.rate_before = str(result.get("before") or "")[:16]
    m.save(update_fields=["enforced", "enforced_month", "throttle_kbit", "rate_before"])
    row.over_at, row.action = now, TrafficMonth.Action.THROTTLE
    row.save(update_fields=["over_at", "action", "updated_at"])
    audit.record("traffic.throttle", ve=ve, detail=f"over its monthly traffic ({_over(row)}): "
                                                   f"rate cut to {kbit / 1000:g} Mbit/s until {until:%Y-%m-%d}")


def lock(ve: VE, m: TrafficMeter, row: TrafficMonth, until, now) -> None:
    """Lock ve until the month ends (unless it is locked for another reason already: that lock stays)."""
    reason = lock_reason(until)
    ours = bool(VE.objects.filter(pk=ve.pk, locked="").update(locked=reason))
    if ours:
        ve.locked = reason
    m.enforced, m.enforced_month = TrafficMonth.Action.SUSPEND, row.month
    m.lock_reason = reason if ours else ""
    m.was_running = ve.status == VE.Status.RUNNING
    m.save(update_fields=["enforced", "enforced_month", "lock_reason", "was_running"])
    row.over_at, row.action = now, TrafficMonth.Action.SUSPEND
    row.save(update_fields=["over_at", "action", "updated_at"])
    audit.record("traffic.lock", ve=ve, detail=f"over its monthly traffic ({_over(row)}): "
                                               f"stopped and locked until {until:%Y-%m-%d}")
    _publish(ve)


def stop(ve: VE) -> int:
    """Queue a stop of ve as the system; 1 if queued, 0 if refused now (busy: the next pass tries again)."""
    try:
        ve_services.request_action(None, ve, Task.Action.STOP)
    except ve_services.ServiceError as exc:
        log.info("traffic: VE %s not stopped now: %s", ve.ctid, exc.message)
        return 0
    return 1


def lift(ve: VE, m: TrafficMeter, eng, why: str) -> None:
    """Undo what the panel did about ve's traffic: its rate, its traffic lock; start it if it was running."""
    what = []
    if m.enforced == TrafficMonth.Action.THROTTLE and m.throttle_kbit:
        try:
            if eng.call("traffic_unthrottle", ctid=ve.ctid, kbit=m.throttle_kbit, before=m.rate_before,
                        timeout=AGENT_TIMEOUT):
                what.append(f"rate back to {m.rate_before or 'the node default'}")
            else:
                what.append("rate left as it is (changed since the throttle)")
        except AgentNotFound:
            pass  # the VE is gone from the node
    ours = m.enforced == TrafficMonth.Action.SUSPEND and m.lock_reason
    if ours and VE.objects.filter(pk=ve.pk, locked=m.lock_reason).update(locked=""):
        ve.locked = ""
        what.append("unlocked")
        if m.was_running and ve.status == VE.Status.STOPPED:
            try:
                ve_services.request_action(None, ve, Task.Action.START)
                what.append("started again")
            except ve_services.ServiceError as exc:
                what.append(f"not started ({exc.message})")
        _publish(ve)
    action = m.enforced
    m.enforced, m.throttle_kbit, m.rate_before, m.lock_reason, m.was_running = "", None, "", "", False
    m.save(update_fields=["enforced", "throttle_kbit", "rate_before", "lock_reason", "was_running"])
    audit.record("traffic.lift", ve=ve, detail=f"{why}: {action} lifted" + (f" ({', '.join(what)})" if what else ""))


def _publish(ve: VE) -> None:
    from vzpanel.tasks.jobs import publish_ve

    try:
        publish_ve(ve)
    except Exception:  # the page refreshes on its own too; a lost push is no reason to fail the pass
        log.debug("could not push VE %s", ve.ctid, exc_info=True)


# --- what the customer sees ------------------------------------------------------------------------------


def summary(ve: VE, now: datetime.datetime | None = None) -> dict:
    """This month's traffic of ve against its quota, what is in force, and the past months (newest first)."""
    from django.utils import timezone

    this_month = accounting.month_of(now or timezone.now())
    rows = list(TrafficMonth.objects.filter(ve=ve, month__lte=this_month).order_by("-month")[:PAST_MONTHS + 1])
    current = rows[0] if rows and rows[0].month == this_month else TrafficMonth(ve=ve, month=this_month)
    past = [r for r in rows if r.month != this_month][:PAST_MONTHS]
    quota = quota_of(ve)
    meter = TrafficMeter.objects.filter(ve=ve).first()
    state, until = "normal", None
    if meter is not None and meter.enforced and meter.enforced_month == this_month:
        state = "throttled" if meter.enforced == TrafficMonth.Action.THROTTLE else "locked"
        until = accounting.next_month(this_month)
    plan = ve_services.plan_of(ve)
    return {
        "month": this_month,
        "bytes_in": current.bytes_in,
        "bytes_out": current.bytes_out,
        "used_bytes": current.used_bytes,
        "quota_bytes": quota,
        "percent": accounting.percent(current.used_bytes, quota),
        "bar_percent": min(accounting.percent(current.used_bytes, quota), 100),
        "over_quota": plan.traffic_over if plan is not None and quota else "",
        "throttle_mbit": plan.traffic_throttle_mbit if plan is not None and quota else None,
        "state": state,
        "until": until,
        "read_at": meter.read_at if meter is not None else None,
        "months": [{"month": r.month, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "used_bytes": r.used_bytes,
                    "quota_bytes": r.quota_bytes, "action": r.action} for r in past],
    }
