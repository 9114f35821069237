"""The periodic job that fills the history: ask the node agent for one pass, store it, prune now and then.

`manage.py serve` queues `collect(node)` every METRICS_INTERVAL seconds (at the front of the node's queue,
a new one only when the last has run), like reconcile; `manage.py metrics_collect` runs it by hand.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from vzpanel.agent.errors import AgentError
from vzpanel.nodes.models import Node
from vzpanel.tasks.jobs import engine
from vzpanel.tasks.queue import get_redis

from . import store

log = logging.getLogger(__name__)
PRUNE_EVERY = 3600  # seconds between two prunes of a node's history


def collect(node_name: str, interval: int | None = None, prune: bool | None = None) -> dict:
    """Sample node_name's VEs once through its agent and store the pass; return what was done.

    ``interval`` is the sampling interval (settings.METRICS_INTERVAL): a pass in the same interval-long slot
    as the previous one is skipped by the agent. ``prune``: None prunes at most once an hour.
    """
    interval = interval or settings.METRICS_INTERVAL
    node, _ = Node.objects.get_or_create(name=node_name)
    try:
        batch = engine(node.name).call("metrics_sample", timeout=60, interval=interval)
    except AgentError as exc:  # the agent is down or refused: a gap in the graphs, not a failed job every 10 s
        log.warning("no usage sample of %s: %s", node.name, exc)
        return {"ts": None, "stored": 0, "skipped": True, "error": str(exc)}
    stored = store.ingest(node, batch)
    out = {"ts": batch.get("ts"), "stored": stored, "skipped": bool(batch.get("skipped"))}
    if prune or (prune is None and _prune_due(node.name)):
        out["pruned"] = store.prune(node)
    return out


def _prune_due(node_name: str) -> bool:
    """Whether this node's hourly prune is due (a Redis key marks the last one)."""
    try:
        return bool(get_redis().set(f"vz:metrics:pruned:{node_name}", int(time.time()), nx=True, ex=PRUNE_EVERY))
    except Exception:  # Redis trouble: skip pruning this time, the next pass tries again
        log.warning("cannot tell whether the history of %s needs pruning", node_name)
        return False
