"""Placement with what the panel knows: each node's load, templates and pools as placement.Candidates.

Read the same way the node pages read them (vzpanel.nodes.status: one aggregate over VEs, one over pools, one
Redis round trip), so a create costs a fixed number of queries whatever the number of nodes and VEs.
"""

from __future__ import annotations

import ipaddress

from .models import Node, Template
from .placement import Candidate, Need, NoSuchNode, PlacementError, pick
from .status import NodeStatus, node_statuses

__all__ = ["NoSuchNode", "PlacementError", "candidates", "choose_node"]


def _free_by_version(st: NodeStatus) -> dict[int, int | None]:
    """Free addresses per IP version in the node's pools; None for a version it has no pool of."""
    free: dict[int, int | None] = {4: None, 6: None}
    for pool in st.address_pools:
        version = ipaddress.ip_network(pool.network, strict=False).version
        free[version] = (free[version] or 0) + pool.free
    return free


def candidates(owner, nodes=None) -> list[tuple[Node, Candidate]]:
    """Every node (or the given ones) as a placement candidate for a VE of owner (the templates owner may use)."""
    statuses = node_statuses(nodes)
    usable: dict[int, set[str]] = {}
    for node_id, name in Template.objects.usable_by(owner).values_list("node_id", "name"):
        usable.setdefault(node_id, set()).add(name)
    out = []
    for st in statuses:
        free = _free_by_version(st)
        disk_free = (st.pool or {}).get("free_bytes")
        out.append((st.node, Candidate(
            name=st.name, memory_mb=st.node.memory_mb, committed_mb=st.ram_committed_bytes // (1024 * 1024),
            alive=st.up, maintenance=st.node.maintenance, templates=frozenset(usable.get(st.node.pk, ())),
            free_addresses=free[4], free_v6=free[6],
            disk_free_mb=None if disk_free is None else int(disk_free) // (1024 * 1024))))
    return out


def need_of(template: str, plan, *, several_nodes: bool) -> Need:
    """What a VE of plan from template needs of its node (no plan: the defaults hosting.assign_on_create uses)."""
    return Need(template=template, memory_mb=plan.ram_mb if plan else 0,
                addresses=plan.ipv4_addresses if plan else 1, addresses_v6=plan.ipv6_addresses if plan else 0,
                disk_mb=plan.disk_gb * 1024 if plan else 0, need_alive=several_nodes)


def choose_node(owner, template: str, plan, named: str | None = None) -> Node:
    """The node a new VE of owner goes to (named: an admin's choice, which must still fit).

    Raises NoSuchNode for a name no node has and PlacementError, saying why for each node, when none fits.
    On a one-node panel a down agent does not refuse (the task waits in its queue, as it always did).
    """
    if named is not None and not Node.objects.filter(name=named).exists():
        raise NoSuchNode(f"there is no node {named!r}")
    pairs = candidates(owner)
    need = need_of(template, plan, several_nodes=len(pairs) > 1)
    chosen = pick([c for _, c in pairs], need, named=named)
    return next(node for node, c in pairs if c is chosen)
