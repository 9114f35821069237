"""The dashboard's own panels: admins' nodes, VE states, failing tasks, capacity and an alerts slot; everyone's
VEs; teachers' classes; resellers' customers' VEs. Each keeps to a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone

from vzpanel.nodes.status import UNKNOWN, node_statuses, nodes_up, shown_status

from .panels import ADMIN, PANELS, Panel, register

LIST_LIMIT = 50  # VEs listed on a panel; the VE list has them all
FAILING_HOURS = 24
STATE_ORDER = ("running", "stopped", "suspended", "rescue", UNKNOWN, "creating", "missing")


def cached_statuses(request) -> list:
    """node_statuses() once per request, shared by the admin panels."""
    if not hasattr(request, "_node_statuses"):
        request._node_statuses = node_statuses()
    return request._node_statuses


def ordered_states(counts: dict) -> list[tuple[str, int]]:
    """Counts by state in a fixed order (the known states first), leaving out zeros."""
    keys = [s for s in STATE_ORDER if counts.get(s)] + sorted(k for k in counts if k not in STATE_ORDER and counts[k])
    return [(k, counts[k]) for k in keys]


def nodes_panel(request) -> dict:
    return {"statuses": cached_statuses(request)}


def ve_states_panel(request) -> dict:
    """Live VEs by state over all nodes; a down node's VEs count as unknown."""
    counts: dict[str, int] = {}
    for st in cached_statuses(request):
        for state, n in st.by_state.items():
            shown = shown_status(state, st.up)
            counts[shown] = counts.get(shown, 0) + n
    return {"states": ordered_states(counts), "total": sum(counts.values())}


def failing_tasks_panel(request) -> dict:
    from vzpanel.tasks.models import Task

    since = timezone.now() - timedelta(hours=FAILING_HOURS)
    failing = Task.objects.filter(status__in=(Task.Status.FAILED, Task.Status.ERRORED), finished_at__gte=since)
    return {"count": failing.count(), "hours": FAILING_HOURS,
            "tasks": list(failing.select_related("ve", "node", "user").order_by("-finished_at", "-id")[:10])}


def capacity_panel(request) -> dict:
    return {"statuses": cached_statuses(request)}


def alerts_placeholder(request) -> dict:
    """Empty until an alerts app registers its own "alerts" panel (vzpanel.dashboard.panels)."""
    return {}


def annotate_states(ves, up: set[str]) -> list:
    """Give each VE (with its node loaded) the state to show: "unknown" on a node whose agent is down."""
    from vzpanel.ves.views import usage_summary

    for ve in ves:
        ve.shown_status = shown_status(ve.status, ve.node.name in up)
        items = usage_summary(ve) if ve.shown_status == "running" else []
        ve.usage_items = [i for i in items if i["label"] in ("Memory", "Disk")]  # the rest is on the VE's page
    return ves


def ve_rows(queryset) -> dict:
    """A bounded list of VEs with the states to show, and the counts of all of them by state (two queries)."""
    by_node = list(queryset.values_list("node__name", "status").annotate(n=Count("id")).order_by())
    ves = list(queryset.select_related("node", "owner").order_by("ctid")[:LIST_LIMIT])
    up = nodes_up({name for name, _, _ in by_node})
    counts: dict[str, int] = {}
    for name, status, n in by_node:
        shown = shown_status(status, name in up)
        counts[shown] = counts.get(shown, 0) + n
    annotate_states(ves, up)
    return {"ves": ves, "total": sum(counts.values()), "states": ordered_states(counts), "limit": LIST_LIMIT}


def my_ves_panel(request) -> dict:
    from vzpanel.ves.models import VE

    return ve_rows(VE.objects.live().filter(owner=request.user))


def classes_panel(request) -> dict:
    """The teacher's courses (and those they assist) with their students' VEs running and stopped."""
    from vzpanel.classroom.models import Course, Membership

    user = request.user
    assisted = Membership.objects.filter(user=user, role=Membership.Role.ASSISTANT).values("course_id")
    students = Q(memberships__role=Membership.Role.STUDENT)
    courses = (Course.objects.filter(Q(teacher=user) | Q(pk__in=assisted)).exclude(status=Course.Status.ENDED)
               .annotate(students=Count("memberships", filter=students),
                         running=Count("memberships", filter=students & Q(memberships__ve__status="running")),
                         stopped=Count("memberships", filter=students & Q(memberships__ve__status="stopped")))
               .order_by("name")[:LIST_LIMIT])
    return {"courses": list(courses)}


def customer_ves_panel(request) -> dict:
    from vzpanel.ves.models import VE

    context = ve_rows(VE.objects.live().filter(owner__reseller=request.user))
    context["customers"] = request.user.customers.count()
    return context


def register_all() -> None:
    users = {"customer", "student", "teacher", "reseller"}
    for panel in (
        Panel("nodes", "dashboard/_nodes.html", nodes_panel, roles={ADMIN}, order=10, wide=True),
        Panel("ve_states", "dashboard/_ve_states.html", ve_states_panel, roles={ADMIN}, order=20),
        Panel("capacity", "dashboard/_capacity.html", capacity_panel, roles={ADMIN}, order=25),
        Panel("failing_tasks", "dashboard/_failing_tasks.html", failing_tasks_panel, roles={ADMIN}, order=30,
              wide=True),
        Panel("alerts", "dashboard/_alerts.html", alerts_placeholder, roles={ADMIN}, order=40, wide=True),
        Panel("my_ves", "dashboard/_my_ves.html", my_ves_panel, roles=users, order=10, wide=True),
        Panel("classes", "dashboard/_classes.html", classes_panel, roles={"teacher"}, order=20, wide=True),
        Panel("customer_ves", "dashboard/_customer_ves.html", customer_ves_panel, roles={"reseller"}, order=15,
              wide=True),
    ):
        if panel.name not in PANELS:  # an app that registered its own under this name first keeps it
            register(panel)

