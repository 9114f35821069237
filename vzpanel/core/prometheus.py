"""/metrics for Prometheus: nodes, VEs and tasks as the panel knows them, behind a bearer token.

Every scrape reads the database and Redis only (vzpanel.nodes.status: a fixed number of queries), never a
node's agent: VE usage is what the last reconcile stored in ``VE.usage`` (every RECONCILE_INTERVAL seconds,
running VEs only), so scraping more often than that shows the same numbers again. A node whose agent is down
exports ``vzpanel_node_up 0`` and its VEs in state "unknown".

Access: ``Authorization: Bearer <token>`` with the panel's VZPANEL_METRICS_TOKEN, or an active admin's API
token (checked, counted and locked out like any API token: vzpanel.api.auth). Anything else is 403 with a
line saying what to send; there is no anonymous access.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.db.models import Count
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# VE.usage keys (vzengine/RESOURCES.md "Accounting") exported per VE: key -> (metric, help, counter?)
VE_USAGE = {
    "cpu_seconds": ("vzpanel_ve_cpu_seconds", "CPU time the VE used since it started, in seconds.", True),
    "memory_bytes": ("vzpanel_ve_memory_bytes", "Memory the VE uses, in bytes.", False),
    "memory_limit_bytes": ("vzpanel_ve_memory_limit_bytes", "The VE's memory limit, in bytes.", False),
    "disk_bytes": ("vzpanel_ve_disk_bytes", "Disk space the VE's files use, in bytes.", False),
    "disk_limit_bytes": ("vzpanel_ve_disk_limit_bytes", "The VE's disk quota, in bytes.", False),
    "nproc": ("vzpanel_ve_processes", "Processes in the VE.", False),
    "net_in_bytes": ("vzpanel_ve_network_receive_bytes", "Bytes the VE received since it was created.", True),
    "net_out_bytes": ("vzpanel_ve_network_transmit_bytes", "Bytes the VE sent since it was created.", True),
}


class PanelCollector:
    """Builds every metric family from the database at collect() time (a fresh registry per scrape)."""

    def collect(self):
        from vzpanel.nodes.status import node_statuses

        statuses = node_statuses()
        yield from node_metrics(statuses)
        yield from ve_metrics({st.name: st.up for st in statuses})
        yield from task_metrics()


def _gauge(name, doc, labels=("node",)):
    return GaugeMetricFamily(name, doc, labels=list(labels))


def node_metrics(statuses):
    """Agent up, last reconcile, CPUs, memory, disk pool and address pools of every node."""
    from vzpanel.nodes.status import shown_status

    fams = {
        "up": _gauge("vzpanel_node_up", "1 while the node's agent answers (its alive key exists), else 0."),
        "seen": _gauge("vzpanel_node_last_seen_timestamp_seconds", "When a reconcile last read the node."),
        "cpus": _gauge("vzpanel_node_cpus", "CPUs of the node."),
        "cpus_given": _gauge("vzpanel_node_cpus_committed", "CPUs given to the node's VEs (sum of their limits)."),
        "mem": _gauge("vzpanel_node_memory_bytes", "Memory of the node, in bytes."),
        "mem_used": _gauge("vzpanel_node_memory_used_bytes", "Memory the node's running VEs use, in bytes."),
        "mem_given": _gauge("vzpanel_node_memory_committed_bytes", "Memory given to the node's VEs (limits)."),
        "disk_size": _gauge("vzpanel_node_disk_pool_size_bytes", "Size of the node's storage pool, in bytes."),
        "disk_used": _gauge("vzpanel_node_disk_pool_used_bytes", "Bytes used in the node's storage pool."),
        "quota": _gauge("vzpanel_node_disk_quota_enforced", "1 when the pool's disk quotas hold, else 0."),
        "addr_size": _gauge("vzpanel_node_address_pool_size", "Addresses of an IP pool VEs can be given.",
                            ("node", "pool", "network")),
        "addr_used": _gauge("vzpanel_node_address_pool_used", "Addresses of an IP pool VEs hold.",
                            ("node", "pool", "network")),
        "ves": _gauge("vzpanel_node_ves", "Live VEs of the node by the state shown (unknown: the node is down).",
                      ("node", "state")),
    }
    for st in statuses:
        n = [st.name]
        fams["up"].add_metric(n, 1 if st.up else 0)
        if st.last_seen_at:
            fams["seen"].add_metric(n, st.last_seen_at.timestamp())
        fams["cpus"].add_metric(n, st.cpus)
        fams["cpus_given"].add_metric(n, st.cpus_committed)
        fams["mem"].add_metric(n, st.memory_bytes)
        fams["mem_used"].add_metric(n, st.memory_used_bytes)
        fams["mem_given"].add_metric(n, st.ram_committed_bytes)
        if st.disk_size_bytes is not None:
            fams["disk_size"].add_metric(n, st.disk_size_bytes)
        if st.disk_pool_used_bytes is not None:
            fams["disk_used"].add_metric(n, st.disk_pool_used_bytes)
        if st.pool is not None:
            fams["quota"].add_metric(n, 0 if st.quota_problem else 1)
        for p in st.address_pools:
            fams["addr_size"].add_metric([st.name, p.name, p.network], p.size)
            fams["addr_used"].add_metric([st.name, p.name, p.network], p.used)
        shown: dict[str, int] = {}
        for state, count in st.by_state.items():
            key = shown_status(state, st.up)
            shown[key] = shown.get(key, 0) + count
        for state, count in sorted(shown.items()):
            fams["ves"].add_metric([st.name, state], count)
    yield from fams.values()


def ve_metrics(node_up: dict[str, bool]):
    """Per live VE: one info series, its state (one series per state, 1 for the current one), its usage."""
    from vzpanel.nodes.status import UNKNOWN, shown_status
    from vzpanel.ves.models import VE

    states = [s for s in VE.Status.values if s != VE.Status.DESTROYED] + [UNKNOWN]
    info = _gauge("vzpanel_ve_info", "A live VE: its host name, owner and template (always 1).",
                  ("ctid", "node", "hostname", "owner", "ostemplate"))
    state = _gauge("vzpanel_ve_state", "1 for the VE's current state, 0 for the others.", ("ctid", "node", "state"))
    seen = _gauge("vzpanel_ve_usage_timestamp_seconds", "When the VE's usage was last read.", ("ctid", "node"))
    usage = {key: (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["ctid", "node"])
             for key, (name, doc, counter) in VE_USAGE.items()}
    rows = (VE.objects.live().order_by("ctid")
            .values_list("ctid", "node__name", "hostname", "owner__username", "ostemplate", "status", "usage",
                         "usage_at"))
    for ctid, node, hostname, owner, ostemplate, status, ve_usage, usage_at in rows.iterator(chunk_size=2000):
        ids = [str(ctid), node]
        info.add_metric([*ids, hostname or "", owner or "", ostemplate or ""], 1)
        now = shown_status(status, node_up.get(node, False))
        for s in states:
            state.add_metric([*ids, s], 1 if s == now else 0)
        if usage_at is not None and ve_usage:
            seen.add_metric(ids, usage_at.timestamp())
        for key, fam in usage.items():
            value = (ve_usage or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fam.add_metric(ids, value)
    yield info
    yield state
    yield seen
    yield from usage.values()


def task_metrics():
    """Tasks by action and state: finished ones as counters, queued and running ones as gauges (one query)."""
    from vzpanel.tasks.models import Task

    finished = CounterMetricFamily("vzpanel_tasks_finished", "Tasks that ended, by action and how they ended.",
                                   labels=["action", "status"])
    active = GaugeMetricFamily("vzpanel_tasks_active", "Tasks queued or running now, by action.",
                               labels=["action", "status"])
    for action, status, n in (Task.objects.values_list("action", "status").annotate(n=Count("id"))
                              .order_by("action", "status")):
        (active if status in Task.ACTIVE else finished).add_metric([action, status], n)
    yield finished
    yield active


class Refused(Exception):
    """A scrape without acceptable credentials; ``status`` and a line saying what to send."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.message, self.status = message, status


def check_access(request) -> None:
    """Let the scrape through with the metrics token or an active admin's API token, else raise Refused."""
    from rest_framework import exceptions
    from rest_framework.request import Request

    from vzpanel.accounts import lockout
    from vzpanel.api.auth import APITokenAuthentication

    configured = getattr(settings, "VZPANEL_METRICS_TOKEN", "")
    how = ("VZPANEL_METRICS_TOKEN" if configured else "VZPANEL_METRICS_TOKEN (not set on this panel)")
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() not in ("bearer", "token"):
        raise Refused(f"/metrics needs 'Authorization: Bearer <token>' with {how} or an admin's API token.")
    # Wrong tokens count as failed sign-ins of the address (APITokenAuthentication below records them), so
    # the metrics token cannot be guessed faster than a password: a locked-out address is refused first.
    if not lockout.is_allowed(request, None, "API token"):
        raise Refused("Too many failed token attempts from your address; try again later.", 429)
    if configured and hmac.compare_digest(parts[1].encode(), configured.encode()):
        return
    try:
        found = APITokenAuthentication().authenticate(Request(request))
    except exceptions.Throttled as exc:
        raise Refused(str(exc.detail), 429) from None
    except exceptions.APIException as exc:
        raise Refused(f"{exc.detail} /metrics takes {how} or an admin's API token.") from None
    if found is None or not found[0].is_panel_admin:
        raise Refused("This API token is not an admin's: /metrics takes an admin's API token or "
                      f"{how}.")


def metrics_view(request):
    """Prometheus' text format of every node, VE and task metric, for a scraper with a token."""
    try:
        check_access(request)
    except Refused as exc:
        response = HttpResponse(exc.message + "\n", status=exc.status, content_type="text/plain; charset=utf-8")
        if exc.status == 429:
            from vzpanel.accounts import lockout

            response["Retry-After"] = str(lockout.seconds_locked(request))
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PanelCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
