"""What reconcile learns about a node's storage pool, kept in Redis for the admins' pages."""

from __future__ import annotations

import json
import logging

from vzpanel.audit import log as audit

log = logging.getLogger(__name__)
TTL = 300  # a report older than this (no reconcile for 5 minutes) is not shown as current


def _key(node_name: str) -> str:
    return f"vz:panel:pool:{node_name}"


def record_pool(node, eng, redis) -> dict | None:
    """Ask node's agent how its pool is (size, free space, whether disk quotas hold), keep it, audit a change."""
    try:
        info = eng.call("pool_info")
    except Exception:
        log.info("no pool report from %s", node.name, exc_info=True)
        return None
    before = redis.get(_key(node.name))
    redis.set(_key(node.name), json.dumps(info), ex=TTL)
    record_capacity(node, info)
    was_ok = json.loads(before).get("quota_enforced", True) if before else True
    if was_ok != info.get("quota_enforced", True):
        if info.get("quota_enforced", True):
            audit.record("node.pool", detail=f"node {node.name}: disk quotas are enforced again")
        else:
            audit.record("node.pool", result="failed", detail=(
                f"node {node.name}: disk quotas are NOT enforced: {info.get('quota_problem') or 'see vzctl pool info'}"))
    return info


def record_capacity(node, info: dict) -> None:
    """Keep the CPUs and memory node's agent reported (Node.cpus, Node.ram_mb: what placement and the node
    pages count against, instead of assuming the panel's own machine)."""
    limits = {"cpus": 32767, "ram_mb": 2**31 - 1}
    got = {k: info[k] for k in limits if isinstance(info.get(k), int) and 0 < info[k] <= limits[k]}
    if got and any(getattr(node, k) != v for k, v in got.items()):
        type(node).objects.filter(pk=node.pk).update(**got)
        for k, v in got.items():
            setattr(node, k, v)


def pool_warnings(node_names, redis) -> list[str]:
    """One line per node whose last report says its disk quotas do not hold."""
    out = []
    for name in node_names:
        raw = redis.get(_key(name))
        if not raw:
            continue
        info = json.loads(raw)
        if not info.get("quota_enforced", True):
            out.append(f"Node {name}: disk quotas are not enforced ({info.get('quota_problem') or 'unknown reason'}); "
                       "run vzctl pool info there.")
    return out


def pool_reports(node_names, redis) -> dict[str, dict]:
    """The last pool report of each node that has a current one (one round trip: the dashboard, node pages
    and /metrics read them all at once)."""
    names = list(node_names)
    if not names:
        return {}
    raw = redis.mget([_key(name) for name in names])
    return {name: json.loads(value) for name, value in zip(names, raw, strict=True) if value}
