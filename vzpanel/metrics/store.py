"""Write samples into the three tiers, prune what is past its retention, and read a graph's points.

Plain SQL through Django's connection (SQLite and PostgreSQL both take it): one multi-row statement per tier
and pass, an upsert that adds a sample to its rollup buckets without reading them back (`rollup.merge`).
"""

from __future__ import annotations

import time

from django.db import connection, transaction

from . import rollup
from .models import Series

COLS = ", ".join(rollup.COLUMNS)
_SUM_SET = ", ".join(f"{c} = {{t}}.{c} + excluded.{c}" for c in ("n", *rollup.SUMMED))
_MAX_SET = ", ".join(f"{c} = CASE WHEN excluded.{c} > {{t}}.{c} OR {{t}}.{c} IS NULL THEN excluded.{c} "
                     f"ELSE {{t}}.{c} END" for c in rollup.MAXED)
BATCH = 400  # rows per statement: 11 values each stays under SQLite's 32766 parameters


def _insert(table: str, rows: list[tuple], conflict: str) -> None:
    width = 2 + len(rollup.COLUMNS)
    with connection.cursor() as cur:
        for i in range(0, len(rows), BATCH):
            chunk = rows[i:i + BATCH]
            values = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * len(chunk))
            cur.execute(f"INSERT INTO {table} (series_id, ts, {COLS}) VALUES {values} "
                        f"ON CONFLICT (series_id, ts) {conflict}", [v for row in chunk for v in row])


def _row(series: int, ts: int, point: dict) -> tuple:
    return (series, ts, *(point[c] for c in rollup.COLUMNS))


def store_points(points: list[tuple[int, int, dict]]) -> int:
    """Store (series id, ts, sample) triples in the raw tier and add them to the rollup tiers; return how many.

    A sample whose (series, ts) is already stored is a repeat (a pass answered twice) and is left out of the
    rollups too.
    """
    if not points:
        return 0
    with transaction.atomic():
        known = _stored(points)
        fresh = [(s, ts, rollup.sample_point(p)) for s, ts, p in points if (s, ts) not in known]
        _insert("metrics_raw", [_row(s, ts, p) for s, ts, p in fresh], "DO NOTHING")
        for tier in rollup.ROLLUPS:
            folded = rollup.fold(fresh, tier.width)
            sets = f"{_SUM_SET}, {_MAX_SET}".format(t=tier.table)
            _insert(tier.table, [_row(s, ts, p) for (s, ts), p in folded.items()], f"DO UPDATE SET {sets}")
    return len(fresh)


def _stored(points) -> set[tuple[int, int]]:
    """Which (series, ts) of points the raw tier holds already (one key lookup per point)."""
    by_ts: dict[int, list[int]] = {}
    for s, ts, _ in points:
        by_ts.setdefault(ts, []).append(s)
    found = set()
    with connection.cursor() as cur:
        for ts, ids in by_ts.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                cur.execute(f"SELECT series_id, ts FROM metrics_raw WHERE series_id IN "
                            f"({', '.join(['%s'] * len(chunk))}) AND ts = %s", [*chunk, ts])
                found.update(cur.fetchall())
    return found


def series_map(node, ctids: set[int]) -> tuple[dict[int, int], int]:
    """({ctid: series id} of node's live VEs among ctids, the node's own series id), making missing series."""
    from vzpanel.ves.models import VE

    ves = dict(VE.objects.live().filter(node=node, ctid__in=ctids).values_list("ctid", "pk"))
    have = dict(Series.objects.filter(node=node, ve_id__in=ves.values()).values_list("ve_id", "pk"))
    missing = [Series(node=node, ve_id=pk) for pk in ves.values() if pk not in have]
    if missing:
        Series.objects.bulk_create(missing, ignore_conflicts=True)
        have = dict(Series.objects.filter(node=node, ve_id__in=ves.values()).values_list("ve_id", "pk"))
    out = {ctid: have[pk] for ctid, pk in ves.items() if pk in have}
    return out, Series.objects.get_or_create(node=node, ve=None)[0].pk


def ingest(node, batch: dict) -> int:
    """Store one pass of the node agent's `metrics_sample` answer; return the samples stored.

    VEs the panel does not know on this node (made with vzctl, not adopted yet) are left out.
    """
    if batch.get("skipped") or "ts" not in batch:
        return 0
    ts = int(batch["ts"])
    samples = {int(k): v for k, v in (batch.get("ves") or {}).items()}
    ids, node_series = series_map(node, set(samples))
    points = [(ids[ctid], ts, s) for ctid, s in samples.items() if ctid in ids]
    if batch.get("node"):
        points.append((node_series, ts, batch["node"]))
    return store_points(points)


def prune(node=None, now: float | None = None) -> dict[str, int]:
    """Delete the points past each tier's retention (of node's series, or all), and the series of destroyed
    VEs that have no point left."""
    from vzpanel.ves.models import VE

    now = time.time() if now is None else now
    removed = {}
    series = Series.objects.filter(node=node) if node is not None else Series.objects.all()
    ids = list(series.values_list("pk", flat=True))
    with connection.cursor() as cur:
        for tier in rollup.TIERS:
            removed[tier.name] = 0
            for i in range(0, len(ids), 500):  # by series: the key's index finds each one's old points
                chunk = ids[i:i + 500]
                cur.execute(f"DELETE FROM {tier.table} WHERE series_id IN ({', '.join(['%s'] * len(chunk))}) "
                            "AND ts < %s", [*chunk, int(now) - tier.keep])
                removed[tier.name] += max(cur.rowcount, 0)
    gone = series.filter(ve__status=VE.Status.DESTROYED)
    for series in gone:
        if not any(_has_points(tier.table, series.pk) for tier in rollup.TIERS):
            series.delete()
    return removed


def _has_points(table: str, series_id: int) -> bool:
    with connection.cursor() as cur:
        cur.execute(f"SELECT 1 FROM {table} WHERE series_id = %s LIMIT 1", [series_id])
        return cur.fetchone() is not None


def read(series_ids: list[int], range_name: str, interval: int = 10, now: float | None = None) -> dict:
    """The graph points of series over the last range: {"step", "tier", "start", "t": [...], "series": {id: {
    metric: [...]}}}, one entry per step from start to now (None where nothing was sampled).

    The database groups the tier's points into steps (sums and counts); the averages (sum / n, as
    `rollup.mean`) are taken here.
    """
    tier, step = rollup.plan(range_name, interval)
    now = int(time.time() if now is None else now)
    end = now - now % step
    start = end - rollup.RANGES[range_name] + step
    times = list(range(start, end + step, step))
    out = {"step": step, "tier": tier.name, "start": start, "t": times, "series": {}}
    if not series_ids:
        return out
    metrics = (*rollup.SUMMED, *rollup.MAXED)
    for sid in series_ids:
        out["series"][sid] = {k: [None] * len(times) for k in metrics}
    sums = ", ".join(f"SUM({c})" for c in rollup.SUMMED)
    maxes = ", ".join(f"MAX({c})" for c in rollup.MAXED)
    summed = len(rollup.SUMMED)
    with connection.cursor() as cur:
        marks = ", ".join(["%s"] * len(series_ids))
        cur.execute(f"SELECT series_id, ts - ts %% %s AS b, SUM(n), {sums}, {maxes} FROM {tier.table} "
                    f"WHERE series_id IN ({marks}) AND ts >= %s GROUP BY series_id, b",
                    [step, *series_ids, start])
        for sid, bucket, n, *values in cur.fetchall():
            i = (bucket - start) // step
            if not 0 <= i < len(times):
                continue
            lines = out["series"][sid]
            for k, v in zip(rollup.SUMMED, values[:summed], strict=True):  # PostgreSQL sums are Decimals
                lines[k][i] = None if v is None else float(v) / float(n or 1)
            for k, v in zip(rollup.MAXED, values[summed:], strict=True):
                lines[k][i] = None if v is None else int(v)
    return out
