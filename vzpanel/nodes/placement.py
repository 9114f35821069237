"""Which node a new VE goes to: one policy, pure logic over what the panel knows of each node.

A node is a candidate when it is not in maintenance, its agent is alive, it has the template, the plan's
memory fits, its disk pool has room for the plan's disk (when it reported its pool), and (if the plan needs
addresses) its pools have free ones. Among candidates the least loaded by memory committed against its total
wins; ties go to the name, so the choice is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlacementError(Exception):
    """No node can take the VE; the message says why for each node (``why`` holds just that part)."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


class NoSuchNode(PlacementError):
    """The node an admin named does not exist."""


@dataclass(frozen=True)
class Candidate:
    name: str
    memory_mb: int
    committed_mb: int = 0
    alive: bool = True
    maintenance: bool = False
    templates: frozenset[str] = field(default_factory=frozenset)
    # Free IPv4 addresses in its pools; None: it has no IPv4 pool (the engine gives none), nothing to run out of.
    free_addresses: int | None = 0
    free_v6: int | None = None
    disk_free_mb: int | None = None  # its disk pool's free space; None: not reported (not refused for it)


@dataclass(frozen=True)
class Need:
    """What a new VE needs of its node."""

    template: str
    memory_mb: int
    addresses: int = 0
    addresses_v6: int = 0
    disk_mb: int = 0
    need_alive: bool = True  # False on a one-node panel: a down agent takes the task when it is back


def refusal(node: Candidate, template: str | Need, memory_mb: int = 0, addresses: int = 0) -> str | None:
    """Why node cannot take the VE, or None."""
    need = template if isinstance(template, Need) else Need(template, memory_mb, addresses)
    if node.maintenance:
        return "in maintenance"
    if need.need_alive and not node.alive:
        return "agent down"
    if need.template not in node.templates:
        return f"no template {need.template}"
    if node.committed_mb + need.memory_mb > node.memory_mb:
        return "not enough memory"
    if node.disk_free_mb is not None and node.disk_free_mb < need.disk_mb:
        return "not enough disk"
    if node.free_addresses is not None and node.free_addresses < need.addresses:
        return "no free address"
    if node.free_v6 is not None and node.free_v6 < need.addresses_v6:
        return "no free IPv6 address"
    return None


def pick(nodes: list[Candidate], template: str | Need, memory_mb: int = 0, addresses: int = 0,
         named: str | None = None) -> Candidate:
    """The node for a new VE; named (an admin's choice) must still be able to take it."""
    need = template if isinstance(template, Need) else Need(template, memory_mb, addresses)
    if named is not None:
        nodes = [n for n in nodes if n.name == named]
        if not nodes:
            raise NoSuchNode(f"there is no node {named!r}")
    reasons = {n.name: refusal(n, need) for n in nodes}
    fit = [n for n in nodes if reasons[n.name] is None]
    if not fit:
        why = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items())) or "no nodes"
        raise PlacementError(f"no node can take this VE ({why})", why)
    return min(fit, key=lambda n: ((n.committed_mb + need.memory_mb) / max(n.memory_mb, 1), n.name))
