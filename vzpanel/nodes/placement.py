"""Which node a new VE goes to: one policy, pure logic over what the panel knows of each node.

A node is a candidate when it is not in maintenance, its agent is alive, it has the template, the plan's
memory fits, and (if the plan needs addresses) its pool has a free one. Among candidates the least loaded by
memory committed against its total wins; ties go to the name, so the choice is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlacementError(Exception):
    """No node can take the VE; the message says why for each node."""


@dataclass(frozen=True)
class Candidate:
    name: str
    memory_mb: int
    committed_mb: int = 0
    alive: bool = True
    maintenance: bool = False
    templates: frozenset[str] = field(default_factory=frozenset)
    free_addresses: int = 0


def refusal(node: Candidate, template: str, memory_mb: int, addresses: int) -> str | None:
    """Why node cannot take the VE, or None."""
    if node.maintenance:
        return "in maintenance"
    if not node.alive:
        return "agent down"
    if template not in node.templates:
        return f"no template {template}"
    if node.committed_mb + memory_mb > node.memory_mb:
        return "not enough memory"
    if node.free_addresses < addresses:
        return "no free address"
    return None


def pick(nodes: list[Candidate], template: str, memory_mb: int, addresses: int = 0,
         named: str | None = None) -> Candidate:
    """The node for a new VE; named (an admin's choice) must still be able to take it."""
    if named is not None:
        nodes = [n for n in nodes if n.name == named]
        if not nodes:
            raise PlacementError(f"there is no node {named!r}")
    reasons = {n.name: refusal(n, template, memory_mb, addresses) for n in nodes}
    fit = [n for n in nodes if reasons[n.name] is None]
    if not fit:
        why = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items())) or "no nodes"
        raise PlacementError(f"no node can take this VE ({why})")
    return min(fit, key=lambda n: ((n.committed_mb + memory_mb) / max(n.memory_mb, 1), n.name))
