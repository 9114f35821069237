"""Bring the panel's view of a node in step with its engine (runs in the task worker, asks the agent)."""

import logging

from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.tasks.jobs import engine
from vzpanel.tasks.models import Task
from vzpanel.tasks.queue import get_redis
from vzpanel.ves.models import VE
from vzpanel.ves.storage_jobs import after_reconcile
from vzpanel.ves.sync import mark_destroyed, publish_ve

from .health import record_pool
from .models import Node, Template

log = logging.getLogger(__name__)


def reconcile_node(node_name: str) -> dict:
    """Sync templates, VE states, addresses and usage of node_name from its engine; return counts."""
    node, _ = Node.objects.get_or_create(name=node_name)
    eng = engine(node.name)
    counts = {"updated": 0, "adopted": 0, "missing": 0, "released": 0}
    counts["swept"] = sweep_dead_tasks(node)
    sync_templates(node, eng)
    counts["refused"] = record_refusals(node)
    record_pool(node, eng, get_redis())
    reported = {info.ctid: info for info in eng.list(usage=True)}
    counts.update(after_reconcile(node, eng, reported))  # snapshots made outside the panel, daily backups
    busy = set(Task.objects.active().filter(node=node).values_list("ve_id", flat=True))
    for ve in VE.objects.live().filter(node=node):
        if ve.pk in busy:
            continue  # a task is changing it right now; its job will store the outcome
        info = reported.pop(ve.ctid, None)
        if info is None:
            if ve.status == VE.Status.CREATING:
                mark_destroyed(ve)  # its create never finished: give the quota back
                counts["released"] += 1
            elif ve.status != VE.Status.MISSING:
                old = ve.status
                ve.status = VE.Status.MISSING
                ve.save(update_fields=["status", "updated_at"])
                publish_ve(ve)
                audit.record("ve.reconcile", ve=ve, detail=f"vanished from the engine (was {old})")
                counts["missing"] += 1
            continue
        old = ve.status
        changed = ve.apply_info(info)
        changed += update_usage(ve, info)
        if changed:
            ve.save(update_fields=[*changed, "updated_at"])
            if "status" in changed:
                publish_ve(ve)
                audit.record("ve.reconcile", ve=ve, detail=f"status {old} -> {ve.status} outside the panel")
                counts["updated"] += 1
    for ctid, info in reported.items():
        if VE.objects.live().filter(ctid=ctid).exists():
            continue  # known on another node
        ve = VE(ctid=ctid, node=node, ostemplate=info.ostemplate or "")
        ve.apply_info(info)
        ve.save()
        audit.record("ve.reconcile", ve=ve, detail="found on the node, adopted without an owner")
        counts["adopted"] += 1
    Node.objects.filter(pk=node.pk).update(last_seen_at=timezone.now())
    return counts


def sweep_dead_tasks(node: Node) -> int:
    """End the tasks whose node agent died under them (vzpanel.tasks.sweeper), before VE states are read."""
    from vzpanel.tasks.sweeper import sweep

    try:
        swept = sweep(node)
    except Exception:
        log.exception("sweeping the dead tasks of %s failed", node.name)
        return 0
    return swept["died"] + swept["lost"]


def sync_templates(node: Node, eng) -> None:
    try:
        templates = eng.templates()
    except Exception:
        log.warning("could not list templates on %s", node.name, exc_info=True)
        return
    names = set()
    for t in templates:
        names.add(t.name)
        Template.objects.update_or_create(
            node=node, name=t.name, defaults={"description": t.description or "", "built": bool(t.built)}
        )
    Template.objects.filter(node=node).exclude(name__in=names).delete()


def update_usage(ve: VE, info) -> list[str]:
    """Store ve's current usage as the agent reported it with the node's list; return the changed fields."""
    if ve.status != VE.Status.RUNNING or info.usage is None:
        if ve.usage:
            ve.usage = {}
            return ["usage"]
        return []
    ve.usage = dict(info.usage)
    ve.usage_at = timezone.now()
    return ["usage", "usage_at"]


def record_refusals(node: Node) -> int:
    """Copy the requests node's agent refused (vzpanel.agent) into the audit log; return how many."""
    import json

    from vzpanel.agent import protocol

    key = protocol.refused_key(node.name)
    r = get_redis()
    pipe = r.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    for item in raw:
        try:
            rec = json.loads(item)
        except ValueError:
            continue
        audit.record("agent.refused", result="refused", detail=(
            f"node {node.name} refused {str(rec.get('op'))[:60]} from {str(rec.get('sender'))[:200]!r}: "
            f"{str(rec.get('why'))[:500]}"))
    return len(raw)
