"""Pushing a template to a node that lacks it: a task on that node's queue whose agent builds it from the
engine's template store (op ``template_build``: the engine's own recipes, built into the node's cache and
imported into its pool); when it succeeds the node's Template row says it is built.

Only the engine's public OS templates can be pushed (those some node reports to everyone or to admins):
course images and templates saved from a VE live in one node's pool and have no recipe to build elsewhere.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from vzpanel.audit import log as audit
from vzpanel.tasks import actions, queue
from vzpanel.tasks.models import Task

from .models import Node, Template

ACTION = "template.push"
PUSHABLE = (Template.Visibility.EVERYONE, Template.Visibility.ADMINS)


class PushError(Exception):
    """The push is refused; the message says why and that nothing was queued."""


def missing_templates(node: Node) -> list[str]:
    """The public OS templates other nodes have that node lacks (no row, or not built there), by name."""
    have = set(node.templates.filter(built=True).values_list("name", flat=True))
    known = Template.objects.filter(visibility__in=PUSHABLE).exclude(node=node).values_list("name", flat=True)
    unbuilt = node.templates.filter(built=False, visibility__in=PUSHABLE).values_list("name", flat=True)
    return sorted((set(known) | set(unbuilt)) - have)


def push_template(user, node: Node, name: str, *, request=None) -> Task:
    """Queue the build of template name on node (it must be one node lacks); return the Task."""
    lacking = missing_templates(node)
    if name not in lacking:
        offer = ", ".join(lacking) or "none: it has every public template the other nodes have"
        raise PushError(f"Template {name!r} cannot be pushed to node {node.name} (templates it lacks: {offer}); "
                        "nothing was queued.")
    try:
        with transaction.atomic():
            if Task.objects.filter(node=node, action=ACTION, params__template=name,
                                   status__in=Task.ACTIVE).exists():
                raise PushError(f"Template {name} is already being pushed to node {node.name}.")
            task = Task.objects.create(node=node, action=ACTION, params={"template": name}, user=user,
                                       ip=audit.client_ip(request))
            audit.record("node.template_push", user=user, request=request, task=task, result="queued",
                         detail=f"template {name} to node {node.name}")
            queue.enqueue_on_commit(task)
    except IntegrityError as exc:
        raise PushError(f"Template {name} could not be queued for node {node.name}: {exc}") from exc
    return task


def run_push(task, progress, engine, **_secrets):
    """The task's handler: the node's agent builds the template; then the node's row says so."""
    name = task.params["template"]
    progress(5, f"building template {name} on node {task.node.name}")
    engine.call("template_build", progress=progress, name=name)
    model = Template.objects.filter(name=name, visibility__in=PUSHABLE).exclude(node=task.node).first()
    Template.objects.update_or_create(node=task.node, name=name, defaults={
        "built": True, "description": model.description if model else "",
        "visibility": model.visibility if model else Template.Visibility.EVERYONE})
    progress(100, f"template {name} is on node {task.node.name}")
    return {"template": name, "node": task.node.name}


def register() -> None:
    actions.register(ACTION, run_push, label="Push template")
