"""A VE's state as the panel may show it: "unknown" while its node does not answer, and why.

The state stored on a VE row is what its node's engine last reported. While the node's agent is down
(vzpanel.nodes.status: its alive key has expired) that may no longer be true, so every page and the API show
"unknown" with the reason, derived when they are read; the stored row is never rewritten (the VE itself
usually keeps running, and the next reconcile puts the truth back).

Actions on such a VE are refused rather than queued: a task for a node that does not answer would be taken
by a worker and fail at once ("agent not running"), or, were it held back, run whenever the node returns,
hours later, when the customer may no longer want it (a reinstall, a stop). A hosting customer expects to
be told now and to try again once the node is back. Only a node that has answered before and stopped is
refused: a node never heard from yet (a panel whose agent is still starting) keeps its tasks queued for the
agent's first start, like before.
"""

from __future__ import annotations

from django.utils import timezone

from vzpanel.nodes.status import UNKNOWN, nodes_up, shown_status


def down_why(node) -> str:
    """What the panel knows of node, whose agent is not alive, in words."""
    if node.last_seen_at is None:
        return f"node {node.name} has not answered yet"
    since = timezone.localtime(node.last_seen_at).strftime("%Y-%m-%d %H:%M %Z")
    return f"node {node.name} is down (no answer since {since})"


def mark(ves) -> list:
    """Set shown_status and unknown_why on each VE (its node loaded): one Redis round trip for them all."""
    ves = list(ves)
    up = nodes_up({ve.node.name for ve in ves}) if ves else set()
    for ve in ves:
        alive = ve.node.name in up
        ve.shown_status = shown_status(ve.status, alive)
        ve.node_down = "" if alive else down_why(ve.node)
        ve.unknown_why = f"{ve.node_down}, so this VE's state is unknown" if ve.shown_status == UNKNOWN else ""
    return ves


def refusal(ve) -> str:
    """Why no task may be queued for ve now (its node stopped answering), or ""."""
    node = ve.node
    if node.last_seen_at is None or node.name in nodes_up([node.name]):
        return ""
    since = timezone.localtime(node.last_seen_at).strftime("%Y-%m-%d %H:%M %Z")
    return (f"VE {ve.ctid} is on node {node.name}, which is down (no answer since {since}); nothing was "
            "queued. Try again once the node is back, or ask an admin.")
