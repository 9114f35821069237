"""How each node is doing, as the panel knows it without asking the node: for the dashboard, node pages, /metrics.

Everything here is read from what the panel already holds, in a fixed number of round trips whatever the
number of VEs: one aggregate query over VEs (counts by state, committed limits, summed usage as reconcile
stored it in ``VE.usage``), one over IP pools, and one Redis pipeline for the agents' alive keys and the pool
reports reconcile keeps (vzpanel.nodes.health). The agent is never called: a scrape or a page view must not
queue work on a node, and a node whose agent is gone must still be shown (as down).

A node is *up* while its agent's alive key exists (the agent refreshes it every few seconds,
vzpanel.agent.protocol.ALIVE_TTL). When it is down, the states its VEs have in the database are what the
last reconcile saw, not what they are now: pages show them as "unknown", never as stopped.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import BigIntegerField, Count, FloatField, IntegerField, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# States the engine decides; while the node is down the panel cannot know them.
ENGINE_STATES = ("running", "stopped", "suspended", "rescue")


def shown_status(status: str, node_up: bool) -> str:
    """The state to show for a VE of a node that is up or down: a down node's VEs are "unknown", not stopped."""
    return status if node_up or status not in ENGINE_STATES else UNKNOWN


@dataclass
class AddressPool:
    """One IP pool of a node and how many of its addresses VEs hold."""

    name: str
    network: str
    kind: str
    used: int
    size: int

    @property
    def free(self) -> int:
        return max(0, self.size - self.used)

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.size)) if self.size else 0


@dataclass
class NodeStatus:
    """One node: whether its agent answers, what its VEs hold of it, and what is left."""

    node: object
    up: bool
    last_seen_at: datetime | None
    cpus: int
    memory_bytes: int
    ves: int = 0
    by_state: dict = field(default_factory=dict)
    cpus_committed: int = 0
    ram_committed_bytes: int = 0
    memory_used_bytes: int = 0
    disk_used_bytes: int = 0
    cpu_seconds: float = 0.0
    processes: int = 0
    pool: dict | None = None  # the last pool report (vzpanel.nodes.health), None when there is none
    address_pools: list[AddressPool] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    @property
    def waiting_to_join(self) -> bool:
        """Whether this is a node added to the panel whose agent has never connected (not the panel's own)."""
        return not self.up and self.last_seen_at is None and self.node.name != settings.VZPANEL_NODE

    @property
    def maintenance(self) -> bool:
        return bool(getattr(self.node, "maintenance", False))

    @property
    def reconcile_late(self) -> bool:
        """Whether the agent answers but no reconcile stored its VEs for three intervals (workers stopped?)."""
        limit = timedelta(seconds=3 * settings.RECONCILE_INTERVAL + 30)
        return self.up and (self.last_seen_at is None or timezone.now() - self.last_seen_at > limit)

    @property
    def ram_left_bytes(self) -> int:
        return self.memory_bytes - self.ram_committed_bytes

    @property
    def memory_percent(self) -> int:
        return min(100, round(100 * self.memory_used_bytes / self.memory_bytes)) if self.memory_bytes else 0

    @property
    def disk_size_bytes(self) -> int | None:
        return (self.pool or {}).get("size_bytes")

    @property
    def disk_pool_used_bytes(self) -> int | None:
        pool = self.pool or {}
        if pool.get("size_bytes") is None or pool.get("free_bytes") is None:
            return None
        return pool["size_bytes"] - pool["free_bytes"]

    @property
    def disk_percent(self) -> int | None:
        used, size = self.disk_pool_used_bytes, self.disk_size_bytes
        return min(100, round(100 * used / size)) if used is not None and size else None

    @property
    def addresses_used(self) -> int:
        return sum(p.used for p in self.address_pools)

    @property
    def addresses_size(self) -> int:
        return sum(p.size for p in self.address_pools)

    @property
    def addresses_free(self) -> int:
        return sum(p.free for p in self.address_pools)

    @property
    def quota_problem(self) -> str | None:
        pool = self.pool or {}
        if pool.get("quota_enforced", True):
            return None
        return pool.get("quota_problem") or "disk quotas are not enforced"


def _usage(key: str, output):
    return Coalesce(Sum(Cast(KT(f"usage__{key}"), output), filter=Q(status="running")), 0, output_field=output)


def _limit(key: str):
    return Coalesce(Sum(Cast(KT(f"limits__{key}"), IntegerField())), 0, output_field=IntegerField())


def ve_totals(node_ids) -> dict[int, dict]:
    """Per node id: live VEs by state, committed limits and summed usage (one aggregate query)."""
    from vzpanel.ves.models import VE

    rows = (VE.objects.live().filter(node_id__in=node_ids).values("node_id", "status")
            .annotate(n=Count("id"), cpus=_limit("cpus"), ram_mb=_limit("ram_mb"),
                      memory=_usage("memory_bytes", BigIntegerField()), disk=_usage("disk_bytes", BigIntegerField()),
                      cpu_seconds=_usage("cpu_seconds", FloatField()), nproc=_usage("nproc", IntegerField())))
    out: dict[int, dict] = {}
    for row in rows:
        t = out.setdefault(row["node_id"], {"by_state": {}, "cpus": 0, "ram_mb": 0, "memory": 0, "disk": 0,
                                            "cpu_seconds": 0.0, "nproc": 0})
        t["by_state"][row["status"]] = row["n"]
        for key in ("cpus", "ram_mb", "memory", "disk", "cpu_seconds", "nproc"):
            t[key] += row[key] or 0
    return out


def pool_size(pool) -> int:
    """Addresses of pool VEs can be given (not its network, broadcast or gateway address: pools.reserved)."""
    from .pools import reserved

    return max(0, ipaddress.ip_network(pool.network).num_addresses - len(reserved(pool)))


def address_pools(node_ids) -> dict[int, list[AddressPool]]:
    """Per node id: its IP pools with the number of addresses in use (one query)."""
    from .models import IPPool

    out: dict[int, list[AddressPool]] = {}
    for p in IPPool.objects.filter(node_id__in=node_ids).annotate(used=Count("addresses")).order_by(
            "node_id", "version", "name"):
        out.setdefault(p.node_id, []).append(AddressPool(p.name, p.network, p.kind, p.used, pool_size(p)))
    return out


def agent_reports(names) -> tuple[set[str], dict[str, dict]]:
    """The nodes whose agent is alive, and the nodes' pool reports: one Redis round trip (none if it is down)."""
    from vzpanel.agent import protocol
    from vzpanel.tasks.queue import get_redis

    from .health import pool_reports

    names = list(names)
    valid = [n for n in names if protocol.NODE_RE.match(n)]  # an agent cannot serve any other name
    if not names:
        return set(), {}
    try:
        r = get_redis()
        pipe = r.pipeline(transaction=False)
        for name in valid:
            pipe.exists(protocol.alive_key(name))
        alive = {name for name, got in zip(valid, pipe.execute(), strict=True) if got}
        return alive, pool_reports(names, r)
    except Exception:  # Redis down: every node shows down, the page still renders
        log.warning("cannot read the agents' state from Redis", exc_info=True)
        return set(), {}


def node_statuses(nodes=None) -> list[NodeStatus]:
    """Every node (or the given ones) with its status; a fixed number of queries whatever the VEs."""
    from .models import Node

    nodes = list(Node.objects.all() if nodes is None else nodes)
    ids = [n.pk for n in nodes]
    totals, pools = ve_totals(ids), address_pools(ids)
    alive, reports = agent_reports(n.name for n in nodes)
    out = []
    for n in nodes:
        t = totals.get(n.pk, {})
        by_state = t.get("by_state", {})
        out.append(NodeStatus(
            node=n, up=n.name in alive, last_seen_at=n.last_seen_at, cpus=n.cpu_count,
            memory_bytes=n.memory_mb * 1024 * 1024, ves=sum(by_state.values()), by_state=by_state,
            cpus_committed=t.get("cpus", 0), ram_committed_bytes=t.get("ram_mb", 0) * 1024 * 1024,
            memory_used_bytes=t.get("memory", 0), disk_used_bytes=t.get("disk", 0),
            cpu_seconds=float(t.get("cpu_seconds", 0.0)), processes=t.get("nproc", 0),
            pool=reports.get(n.name), address_pools=pools.get(n.pk, [])))
    return out


def nodes_up(names) -> set[str]:
    """Which of the named nodes have a live agent (for showing VE states without the rest of the status)."""
    return agent_reports(names)[0]

