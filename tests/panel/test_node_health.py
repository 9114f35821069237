"""Reconcile asks each node's agent how its storage pool is; admins see a node whose disk quotas do not hold."""

import json

import pytest
import redis

from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.health import _key
from vzpanel.nodes.reconcile import reconcile_node

pytestmark = pytest.mark.root


def test_reconcile_keeps_the_pool_report_and_admins_see_unenforced_quotas(root_agent, redis_url, node, admin,
                                                                         owner, client_for):
    reconcile_node(node.name)
    r = redis.Redis.from_url(redis_url)
    report = json.loads(r.get(_key(node.name)))
    assert report["quota_enforced"] is True and report["backend"]  # what the real agent said of its pool
    assert "disk quotas are not enforced" not in client_for(admin).get("/ves/").content.decode()

    # What an agent reports for a pool whose quota data went inconsistent and could not be rescanned:
    bad = {**report, "quota_enforced": False, "quota_problem": "qgroup data inconsistent, rescan failed"}
    r.set(_key(node.name), json.dumps(bad))
    page = client_for(admin).get("/ves/").content.decode()
    assert f"Node {node.name}: disk quotas are not enforced (qgroup data inconsistent, rescan failed)" in page
    assert "disk quotas are not enforced" not in client_for(owner).get("/ves/").content.decode()

    # The next reconcile reads the pool again (it is fine) and says so in the audit log.
    reconcile_node(node.name)
    assert json.loads(r.get(_key(node.name)))["quota_enforced"] is True
    assert AuditEntry.objects.filter(action="node.pool", detail__contains="enforced again").exists()
