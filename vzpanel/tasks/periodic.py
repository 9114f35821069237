"""The periodic rounds `serve` starts, for every node the panel knows (not only its own).

`serve` queues its own node's round itself, as soon as it is up. It runs as root and never opens the
panel's database, so it cannot list the other nodes: it queues one `fan_out` job on its own queue, and that
job (a task worker, the web user) queues the round on each other node's queue. Each node's jobs have fixed
ids (`periodic-<kind>-<job>-<node>`), so a node whose last round has not run yet (a slow or dead node) is
skipped this time instead of piling rounds up behind it; the other nodes go on.
"""

from __future__ import annotations

from rq.exceptions import NoSuchJobError
from rq.job import Job

from .queue import get_queue, get_redis

# The jobs of each round, in order, each called with the node's name: (short name, dotted path, timeout).
ROUNDS = {
    "reconcile": [
        ("reconcile", "vzpanel.nodes.reconcile.reconcile_node", 300),
        ("classroom", "vzpanel.classroom.jobs.tick", 300),  # lab schedules and the idle policy
        ("traffic", "vzpanel.traffic.jobs.meter_node", 300),  # monthly traffic, quotas
        ("alerts", "vzpanel.alerts.services.evaluate", 300),  # after reconcile stored states and usage
    ],
    "metrics": [("metrics", "vzpanel.metrics.jobs.collect", 60)],  # usage samples for the graphs
}
PENDING = ("queued", "started", "deferred", "scheduled")


def job_id(kind: str, name: str, node: str) -> str:
    return f"periodic-{kind}-{name}-{node}"


def still_pending(ids) -> bool:
    """Whether any of the jobs ids is still queued or running."""
    for jid in ids:
        try:
            if Job.fetch(jid, connection=get_redis()).get_status(refresh=True) in PENDING:
                return True
        except NoSuchJobError:  # ran (result_ttl=0) or was never queued
            continue
    return False


def enqueue_round(queue, kind: str, node: str) -> list:
    """Queue round kind's jobs for node on queue (its own); return the jobs."""
    return [queue.enqueue(path, node, job_id=job_id(kind, name, node), result_ttl=0, failure_ttl=3600,
                          job_timeout=timeout, at_front=kind == "metrics",  # a sample must not wait behind tasks
                          description=f"{name} {node}")
            for name, path, timeout in ROUNDS[kind]]


def fan_out(kind: str, skip: str = "") -> dict:
    """Queue round kind's jobs on every node's own queue but skip's; return {node: "queued" | "busy"}."""
    from vzpanel.nodes.models import Node

    if kind not in ROUNDS:
        raise ValueError(f"unknown periodic round {kind!r}")
    out = {}
    for node in Node.objects.exclude(name=skip).order_by("name").values_list("name", flat=True):
        if still_pending(job_id(kind, name, node) for name, _, _ in ROUNDS[kind]):
            out[node] = "busy"
            continue
        enqueue_round(get_queue(node), kind, node)
        out[node] = "queued"
    return out
