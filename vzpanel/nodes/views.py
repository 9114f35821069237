"""Admins' node pages (state, load, pools, VEs, templates, tasks) and the templates page everyone may read."""

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from vzpanel.core.decorators import admin_required

from .models import Node, Template
from .status import node_statuses, shown_status

VES_PER_PAGE = 100


@admin_required
def node_list(request):
    """Every node with its state and load."""
    return render(request, "nodes/node_list.html", {"statuses": node_statuses()})


@admin_required
def node_detail(request, name):
    """One node: state, load, pools, its VEs (states "unknown" while it is down), templates, running tasks."""
    from vzpanel.tasks.models import Task
    from vzpanel.ves.models import VE

    node = get_object_or_404(Node, name=name)
    st = node_statuses([node])[0]
    page = Paginator(VE.objects.live().filter(node=node).select_related("owner").order_by("ctid"),
                     VES_PER_PAGE).get_page(request.GET.get("page"))
    for ve in page:
        ve.shown_status = shown_status(ve.status, st.up)
    context = {
        "node": node, "st": st, "page": page,
        "templates": node.templates.select_related("owner", "course").order_by("name"),
        "tasks": Task.objects.active().filter(node=node).select_related("ve", "user").order_by("created_at")[:50],
    }
    return render(request, "nodes/node_detail.html", context)


@login_required
def template_list(request):
    """Admins: every template of every node with its owner and visibility; others: the ones they may use."""
    templates = Template.objects.usable_by(request.user).select_related("node", "owner", "course").order_by(
        "name", "node__name")
    if not request.user.is_panel_admin:  # the same template on several nodes is one choice to them
        seen: set[str] = set()
        templates = [t for t in templates if not (t.name in seen or seen.add(t.name))]
    return render(request, "nodes/template_list.html", {"templates": templates})
