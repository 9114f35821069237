"""Admins' node pages: a node's state (agent alive, last seen), load, pools, VEs, templates and running tasks; a
node whose agent stops answering shows down and its VEs unknown, not stopped. Everyone else gets 404 there;
the templates page shows admins every template and others only those they may use."""

import pytest

from tests.panel.conftest import make_user, make_ve, stop_process, wait_for
from vzpanel.nodes.models import IPAddress, IPPool, Node, Template
from vzpanel.nodes.status import nodes_up
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE


def page(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


@pytest.mark.django_db
def test_only_admins_see_node_pages(client, client_for, node, owner, teacher, plan):
    reseller = make_user("rita", "reseller")
    for user in (owner, teacher, reseller):
        c = client_for(user)
        assert c.get("/nodes/").status_code == 404
        assert c.get(f"/nodes/{node.name}/").status_code == 404
        assert 'href="/nodes/"' not in page(c, "/")  # no Nodes link either
    assert client.get("/nodes/").status_code == 302  # anonymous: to the sign-in
    assert client.get(f"/nodes/{node.name}/")["Location"].startswith("/login/")


@pytest.mark.django_db
def test_an_unknown_node_is_404(client_for, admin, node):
    assert client_for(admin).get("/nodes/no-such-node/").status_code == 404
    assert client_for(admin).get("/nodes/%3Cscript%3E/").status_code == 404


@pytest.mark.django_db
def test_a_node_page_shows_pools_ves_templates_and_running_tasks(client_for, admin, owner, node):
    ve = make_ve(owner, node, 101)
    VE.objects.filter(pk=ve.pk).update(usage={"memory_bytes": 96 << 20, "disk_bytes": 300 << 20},
                                       limits={"ram_mb": 256, "cpus": 1})
    make_ve(owner, node, 102, status="stopped")
    make_ve(owner, node, 103, status="destroyed")
    elsewhere = make_ve(owner, Node.objects.create(name="node-b"), 104)
    pool = IPPool.objects.create(node=node, name="public", network="192.0.2.0/28")
    IPAddress.objects.create(pool=pool, address="192.0.2.5", ve=ve)
    task = Task.objects.create(node=node, ve=ve, action="restart", status="running", progress=40, user=owner)
    Task.objects.create(node=node, ve=ve, action="start", status="completed")
    Template.objects.create(node=node, name="golden", owner=owner, visibility=Template.Visibility.USER)

    html = page(client_for(admin), f"/nodes/{node.name}/")
    assert 'id="node-state" data-state="down"' in html  # no agent runs in this test
    assert "its VEs' states are unknown" in html
    assert 'data-ctid="101" data-state="unknown"' in html and 'data-ctid="102" data-state="unknown"' in html
    assert 'data-ctid="103"' not in html and f'data-ctid="{elsewhere.ctid}"' not in html
    assert "96 MiB" in html and "300 MiB" in html
    assert "1 of 13 (8%)" in html  # a /28 gives VEs 13 addresses
    assert f'href="/tasks/{task.pk}/"' in html and "40%" in html
    assert "golden" in html and "its owner" in html and owner.username in html
    assert f'data-metrics-url="/metrics/nodes/{node.name}/"' in html  # the metrics app's graphs of the node

    listing = page(client_for(admin), "/nodes/")
    assert f'href="/nodes/{node.name}/"' in listing and 'href="/nodes/node-b/"' in listing


@pytest.mark.django_db
def test_the_templates_page_shows_admins_everything_and_others_what_they_may_use(client_for, admin, owner,
                                                                                   outsider, node):
    other = Node.objects.create(name="node-b")
    Template.objects.create(node=other, name="tiny", built=True)  # the same public template on a second node
    Template.objects.create(node=node, name="owners-image", owner=owner, visibility=Template.Visibility.USER)
    Template.objects.create(node=node, name="olgas-image", owner=outsider, visibility=Template.Visibility.USER)
    Template.objects.create(node=node, name="staff-only", visibility=Template.Visibility.ADMINS)

    html = page(client_for(owner), "/nodes/templates/")
    assert html.count('data-template="tiny"') == 1  # one choice, whichever node has it
    assert 'data-template="owners-image"' in html
    assert "olgas-image" not in html and "staff-only" not in html
    assert "node-b" not in html and f'href="/nodes/{node.name}/"' not in html

    html = page(client_for(admin), "/nodes/templates/")
    assert html.count('data-template="tiny"') == 2
    for name in ("owners-image", "olgas-image", "staff-only"):
        assert f'data-template="{name}"' in html
    assert outsider.username in html and "admins only" in html and 'href="/nodes/node-b/"' in html


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_node_that_stops_answering_shows_down_and_its_ves_unknown(root_agent, engine, tiny_ve, node, owner,
                                                                     admin, client_for):
    from vzpanel.nodes.reconcile import reconcile_node

    VE.objects.create(ctid=tiny_ve, node=node, owner=owner, hostname="n1", ostemplate="tiny", status="stopped")
    wait_for(lambda: nodes_up([node.name]), 60, "the node agent to announce itself")
    reconcile_node(node.name)
    admin_client = client_for(admin)

    html = page(admin_client, f"/nodes/{node.name}/")
    assert 'id="node-state" data-state="up"' in html
    assert f'data-ctid="{tiny_ve}" data-state="running"' in html  # what the reconcile read from the engine
    pool = engine.pool_info()
    assert pool["backend"] in html  # the pool report the reconcile kept
    assert "never" not in html.split('id="node-load"')[1].split("</dl>")[0]  # it has been seen
    assert 'data-template="tiny"' in page(admin_client, "/nodes/templates/")
    assert f'data-node="{node.name}" data-state="up"' in page(admin_client, "/")

    stop_process(root_agent, timeout=30)  # the agent goes away (its alive key with it)
    assert not nodes_up([node.name])
    html = page(admin_client, f"/nodes/{node.name}/")
    assert 'id="node-state" data-state="down"' in html
    assert f'data-ctid="{tiny_ve}" data-state="unknown"' in html
    assert VE.objects.get(ctid=tiny_ve).status == "running"  # the panel keeps the last state; it shows unknown
    owners = page(client_for(owner), "/")
    assert f'data-ctid="{tiny_ve}" data-state="unknown"' in owners
    assert f'data-node="{node.name}" data-state="down"' in page(admin_client, "/")
