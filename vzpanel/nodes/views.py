"""Admins' node pages (state, load, pools, VEs, templates, tasks) and the templates page everyone may read."""

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from vzpanel.audit import log as audit
from vzpanel.core.decorators import admin_required

from . import join, push
from .forms import AddNodeForm
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
        "missing": push.missing_templates(node),
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


@admin_required
@require_POST
def node_maintenance(request, name):
    """Put a node in maintenance (no new VEs are placed there) or take it out; audited."""
    node = get_object_or_404(Node, name=name)
    wanted = request.POST.get("maintenance")
    if wanted not in ("on", "off"):
        messages.error(request, "Say maintenance=on or maintenance=off; nothing was changed.")
        return redirect("nodes:detail", node.name)
    on = wanted == "on"
    with transaction.atomic():
        changed = Node.objects.filter(pk=node.pk).exclude(maintenance=on).update(maintenance=on)
        if changed:
            audit.record("node.maintenance", request=request,
                         detail=f"node {node.name}: maintenance {'on: no new VEs are placed here' if on else 'off'}")
    if on:
        messages.success(request, f"Node {node.name} is in maintenance: no new VEs are placed there. Its VEs keep "
                                  "running.")
    else:
        messages.success(request, f"Node {node.name} takes new VEs again.")
    return redirect("nodes:detail", node.name)


@admin_required
def node_add(request):
    """Add a node: its row and its own Redis credentials; show, once, the one command to run on the new host."""
    form = AddNodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        requests_dir = join.joins_dir(settings.STATE_DIR)
        try:
            with transaction.atomic():
                node = Node.objects.create(name=data["name"], description=data["description"])
                audit.record("node.add", request=request, detail=f"node {node.name} added, waiting to join")
                password = join.request_join(requests_dir, node.name)  # last: a refusal rolls the rest back
        except join.JoinError as exc:
            form.add_error("name", str(exc))
        except OSError as exc:  # the web user's data directory: a broken install, said in words
            form.add_error(None, f"The node's credentials cannot be kept in {requests_dir} ({exc.strerror}); "
                                 "nothing was changed.")
        else:
            url = join.agent_url(node.name, password, data["redis_host"], data["redis_port"], tls=data["tls"])
            steps = join.join_steps(node.name, url, tls=data["tls"], vz_root=data["vz_root"],
                                    cert_path=Path(settings.STATE_DIR) / "redis-tls" / "cert.pem")
            response = render(request, "nodes/node_added.html", {"node": node, "steps": steps[:-1],
                                                                  "command": steps[-1]})
            response["Cache-Control"] = "no-store"  # the command holds the node's password
            return response
    return render(request, "nodes/node_add.html", {"form": form}, status=400 if form.errors else 200)


@admin_required
@require_POST
def node_push_template(request, name):
    """Queue the build of a template the node lacks on its agent (vzpanel.nodes.push); show the task."""
    node = get_object_or_404(Node, name=name)
    try:
        task = push.push_template(request.user, node, request.POST.get("template", ""), request=request)
    except push.PushError as exc:
        messages.error(request, str(exc))
        return redirect("nodes:detail", node.name)
    messages.success(request, f"Template {task.params['template']} is being pushed to node {node.name}.",
                     extra_tags=f"task:{task.pk}")
    return redirect("tasks:detail", task.pk)
