"""The periodic traffic pass of one node (task worker; `manage.py serve` queues it with every reconcile)."""

from __future__ import annotations

import datetime

from django.utils import timezone

from vzpanel.nodes.models import Node
from vzpanel.tasks.jobs import engine

from . import services

READ_TIMEOUT = 120.0  # seconds for the node's one-pass counter report


def meter_node(node_name: str, now: datetime.datetime | None = None) -> dict:
    """Read every VE's counters of node_name in one agent call, add them to the months, hold VEs to quotas.

    ``now`` is the moment the pass counts as (a test moves it to the next month); default: the clock.
    """
    node, _ = Node.objects.get_or_create(name=node_name)
    eng = engine(node.name)
    report = eng.call("traffic_counters", timeout=READ_TIMEOUT)
    return services.meter(node, eng, report, now or timezone.now()).as_dict()
