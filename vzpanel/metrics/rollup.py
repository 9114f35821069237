"""The arithmetic of the history, without Django: tiers, buckets, sums and averages, and which tier a graph reads.

A point is a dict of sums over ``n`` samples (`models.py`); one sample is a point with n = 1. Adding samples to
a bucket is adding sums, counting, and taking the larger maximum, in any order and any grouping, so the
1-minute and 10-minute tiers are each fed from the samples directly (the SQL upsert in `store.py` does the same
as `merge` here) and a late or backlogged sample lands where it belongs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUMMED = ("cpu", "mem", "disk", "net_in", "net_out", "nproc")
MAXED = ("cpu_max", "mem_max")
COLUMNS = ("n", *SUMMED, *MAXED)


@dataclass(frozen=True)
class Tier:
    name: str
    table: str
    width: int  # seconds per point (the raw tier: the sampling interval at most)
    keep: int  # seconds of history kept


DAY = 86400
TIERS = (
    Tier("raw", "metrics_raw", 10, DAY),
    Tier("minute", "metrics_minute", 60, 7 * DAY),
    Tier("tenmin", "metrics_tenmin", 600, 365 * DAY),
)
ROLLUPS = TIERS[1:]

RANGES = {"hour": 3600, "day": DAY, "week": 7 * DAY, "month": 30 * DAY, "year": 365 * DAY}
MAX_POINTS = 1500  # a graph's width in pixels, give or take: more points draw nothing more
STEPS = (10, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, DAY)


def sample_point(sample: dict) -> dict:
    """The point of one sample: its values as sums over one sample, and as the maxima."""
    p = {"n": 1, **{k: sample.get(k) for k in SUMMED}}
    p["cpu_max"], p["mem_max"] = p["cpu"], p["mem"]
    return p


def _add(a, b):
    return None if a is None or b is None else a + b


def _max(a, b):
    if a is None:
        return b
    return a if b is None or a >= b else b


def merge(a: dict, b: dict) -> dict:
    """The point covering the samples of both a and b (an unknown sum makes the sum unknown)."""
    out = {"n": a["n"] + b["n"]}
    for k in SUMMED:
        out[k] = _add(a.get(k), b.get(k))
    for k in MAXED:
        out[k] = _max(a.get(k), b.get(k))
    return out


def fold(points, width: int) -> dict[tuple[int, int], dict]:
    """Group (series, ts, point) triples into width-second buckets: {(series, bucket start): point}."""
    out: dict[tuple[int, int], dict] = {}
    for series, ts, point in points:
        key = (series, ts - ts % width)
        out[key] = merge(out[key], point) if key in out else dict(point)
    return out


def mean(point: dict) -> dict:
    """The averages of a point (sums / n) with its maxima: what a graph shows."""
    n = point["n"] or 1
    out = {k: (None if point.get(k) is None else point[k] / n) for k in SUMMED}
    for k in MAXED:
        out[k] = point.get(k)
    return out


def plan(range_name: str, interval: int = 10) -> tuple[Tier, int]:
    """(tier to read, seconds per graph point) for a graph of the last ``range_name``.

    The step is the smallest round one that keeps the graph under MAX_POINTS; the tier is the coarsest whose
    points are no wider than the step and which still holds the whole range.
    """
    span = RANGES[range_name]
    want = max(interval, math.ceil(span / MAX_POINTS))
    step = next((s for s in STEPS if s >= want), STEPS[-1])
    usable = [t for t in TIERS if max(t.width, interval if t.name == "raw" else 0) <= step and t.keep >= span]
    tier = usable[-1] if usable else TIERS[-1]
    if tier.name == "raw":
        step = max(step, interval)
    return tier, step
