"""The graphs' JSON: one endpoint per VE, node and class, for the last hour, day, week, month or year.

Who sees what is decided where it always is: a VE's graphs by `ves.access.get_ve_or_404` (anyone else gets a
404, as for the VE page), a node's by `admin_required`, a class's by the course's manage rule (admins and the
course's teacher; students and assistants get a 404).

Answer (`?range=hour|day|week|month|year`, default hour)::

    {"range": "hour", "step": 10, "tier": "raw", "interval": 10, "t": [unix seconds, ...],
     "metrics": {"cpu": [...], "cpu_max": [...], "mem": [...], "mem_max": [...], "disk": [...],
                 "net_in": [...], "net_out": [...], "nproc": [...]}}

cpu in percent of one CPU, mem and disk in bytes, net in bytes per second, null where nothing was sampled.
A class with ``?by=ve&metric=cpu`` answers ``{"t", "metric", "lines": [{"label", "ctid", "values"}]}`` instead.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from vzpanel.classroom.access import course_view
from vzpanel.core.decorators import admin_required
from vzpanel.nodes.models import Node
from vzpanel.ves.access import get_ve_or_404

from . import rollup, store
from .models import Series

METRICS = (*rollup.SUMMED, *rollup.MAXED)


def _range(request) -> str:
    name = request.GET.get("range", "hour")
    if name not in rollup.RANGES:
        raise BadRange(f"range must be one of {', '.join(rollup.RANGES)}")
    return name


class BadRange(ValueError):
    """The query asks for a range or metric the graphs do not have."""


def _bad(exc: Exception) -> JsonResponse:
    return JsonResponse({"error": str(exc)}, status=400)


def _shown(metric: str, values: list) -> list:
    """Values as the graphs show them: CPU in percent of one CPU (stored in milli-CPUs)."""
    if metric in ("cpu", "cpu_max"):
        return [None if v is None else round(v / 10, 2) for v in values]
    return [None if v is None else round(v) for v in values]


def _answer(range_name: str, data: dict, lines: dict | None) -> dict:
    metrics = {m: _shown(m, lines[m]) if lines else [None] * len(data["t"]) for m in METRICS}
    return {"range": range_name, "step": data["step"], "tier": data["tier"],
            "interval": settings.METRICS_INTERVAL, "t": data["t"], "metrics": metrics}


def series_graph(range_name: str, series_id: int | None) -> dict:
    data = store.read([series_id] if series_id else [], range_name, settings.METRICS_INTERVAL)
    return _answer(range_name, data, data["series"].get(series_id))


@require_GET
@login_required
def ve_graph(request, ctid: int):
    ve = get_ve_or_404(request.user, ctid)
    try:
        range_name = _range(request)
    except BadRange as exc:
        return _bad(exc)
    series = Series.objects.filter(ve=ve).order_by("-pk").values_list("pk", flat=True).first()  # its node now
    return JsonResponse(series_graph(range_name, series))


@require_GET
@admin_required
def node_graph(request, name: str):
    node = get_object_or_404(Node, name=name)
    try:
        range_name = _range(request)
    except BadRange as exc:
        return _bad(exc)
    series = Series.objects.filter(node=node, ve__isnull=True).values_list("pk", flat=True).first()
    return JsonResponse(series_graph(range_name, series))


@require_GET
@course_view("manage")
def class_graph(request, course):
    """The course's students' VEs: summed (default) or one line per student for one metric (``by=ve``)."""
    from vzpanel.classroom.models import Membership

    try:
        range_name = _range(request)
        metric = request.GET.get("metric", "cpu")
        if metric not in METRICS:
            raise BadRange(f"metric must be one of {', '.join(METRICS)}")
    except BadRange as exc:
        return _bad(exc)
    rows = (Membership.objects.filter(course=course, role=Membership.Role.STUDENT, ve__isnull=False)
            .exclude(ve__status="destroyed").select_related("user", "ve").order_by("user__username"))
    ve_ids = {m.ve_id: m for m in rows}
    series = dict(Series.objects.filter(ve_id__in=ve_ids).values_list("pk", "ve_id"))
    data = store.read(sorted(series), range_name, settings.METRICS_INTERVAL)
    if request.GET.get("by") == "ve":
        member = {sid: ve_ids[ve_id] for sid, ve_id in series.items()}
        lines = [{"label": member[sid].user.username, "ctid": member[sid].ve.ctid,
                  "values": _shown(metric, values[metric])}
                 for sid, values in sorted(data["series"].items(), key=lambda kv: member[kv[0]].user.username)]
        return JsonResponse({"range": range_name, "step": data["step"], "tier": data["tier"],
                             "interval": settings.METRICS_INTERVAL, "t": data["t"], "metric": metric, "lines": lines})
    return JsonResponse(_answer(range_name, data, summed(data) if series else None))


def summed(data: dict) -> dict:
    """The class as one: per step the sum over its VEs (the largest maximum), None where no VE was sampled."""
    out = {}
    for m in METRICS:
        combine = max if m in rollup.MAXED else sum
        columns = zip(*(lines[m] for lines in data["series"].values()), strict=True)
        out[m] = [combine(known) if (known := [v for v in col if v is not None]) else None for col in columns]
    return out
