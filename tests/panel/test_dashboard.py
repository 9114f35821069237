"""The home page is a dashboard of the user's role: admins see nodes, VE states, failing tasks, capacity and an
alerts slot; customers their own VEs (never another's, never a node); teachers their classes with running and
stopped counts; resellers their customers' VEs. Its queries do not grow with the number of VEs."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.panel.conftest import make_user, make_ve
from vzpanel.dashboard import panels
from vzpanel.nodes.models import IPAddress, IPPool, Node
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

pytestmark = pytest.mark.django_db


def page(client, path="/"):
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def panel_names(html) -> list[str]:
    import re

    return re.findall(r'id="panel-([a-z_]+)"', html)


def add_ves(owner, node, first, count, status="running"):
    """count VEs of owner with stored usage and limits, as reconcile leaves them."""
    VE.objects.bulk_create(
        VE(ctid=first + i, node=node, owner=owner, hostname=f"bulk{first + i}", ostemplate="tiny", status=status,
           limits={"ram_mb": 256, "cpus": 1, "disk_gb": 2, "nproc": 128},
           usage={"memory_bytes": 10 << 20, "disk_bytes": 50 << 20, "cpu_seconds": 1.5, "nproc": 3}
           if status == "running" else {})
        for i in range(count))


def test_it_shows_admins_nodes_ve_states_failing_tasks_capacity_and_an_alerts_slot(client_for, admin, owner, node):
    make_ve(owner, node, 101)
    make_ve(owner, node, 102, status="stopped")
    make_ve(owner, node, 103, status="destroyed")
    pool = IPPool.objects.create(node=node, name="public", network="192.0.2.0/29")
    IPAddress.objects.create(pool=pool, address="192.0.2.2", ve=VE.objects.get(ctid=101))
    now = timezone.now()
    failed = Task.objects.create(node=node, ve=VE.objects.get(ctid=101), action="start", status="failed",
                                 error="the engine refused: boom-recent", finished_at=now - timedelta(hours=1))
    Task.objects.create(node=node, action="stop", status="errored", error="boom-old",
                        finished_at=now - timedelta(hours=30))
    Task.objects.create(node=node, action="stop", status="completed", finished_at=now)

    html = page(client_for(admin))
    assert panel_names(html) == ["nodes", "ve_states", "capacity", "failing_tasks", "alerts"]
    # No agent runs for this node: it is down, and its VEs' states are unknown (not stopped).
    assert f'data-node="{node.name}" data-state="down"' in html
    assert '<li class="list-inline-item mb-1" data-state="unknown"><span class="badge text-bg-secondary">unknown' \
           '</span> 2</li>' in html
    assert "1 of 5" in html  # one of the pool's 5 usable addresses is held (network, broadcast, gateway are not)
    assert '<span id="failing-count">1</span>' in html
    assert f'data-task="{failed.pk}"' in html and "boom-recent" in html and "boom-old" not in html
    assert 'data-placeholder="alerts"' not in html and "Nothing is firing." in html  # the alerts app's panel


def test_an_app_replaces_the_alerts_placeholder_by_registering_its_own_panel(client_for, admin, owner, node):
    original = panels.PANELS["alerts"]
    try:
        panels.register(panels.Panel("alerts", "dashboard/_alerts.html", lambda request: None, roles={"admin"}))
        assert "alerts" not in panel_names(page(client_for(admin)))  # context None: hidden for this request
    finally:
        panels.register(original)
    assert "alerts" in panel_names(page(client_for(admin)))


def test_a_customer_sees_their_own_ves_and_no_one_elses_and_no_node(client_for, owner, outsider, node):
    hidden = Node.objects.create(name="secret-node-7")
    mine = make_ve(owner, hidden, 101, hostname="mine-web")
    VE.objects.filter(pk=mine.pk).update(usage={"memory_bytes": 64 << 20, "disk_bytes": 1 << 30, "nproc": 7})
    make_ve(owner, node, 102, status="stopped", hostname="mine-db")
    make_ve(outsider, node, 201, hostname="olgas-secret")

    html = page(client_for(owner))
    assert panel_names(html) == ["my_ves", "alerts"]  # alerts: only of their own VEs (tests/panel/test_alerts.py)
    assert "Your VEs: 2" in html and ">unknown 2</span>" in html and ">running " not in html
    assert 'data-ctid="101"' in html and 'data-ctid="102"' in html and "mine-web" in html
    assert "olgas-secret" not in html and 'data-ctid="201"' not in html
    assert "secret-node-7" not in html and "/nodes/secret" not in html and 'href="/nodes/"' not in html
    assert 'data-sparkline="/metrics/ves/101/"' in html  # the metrics app's last hour, drawn small
    # its node's agent is down: the customer is told the state is unknown, not that the VE is stopped
    assert 'data-ctid="101" data-state="unknown"' in html

    other = page(client_for(outsider))
    assert 'data-ctid="201"' in other and "mine-web" not in other
    assert client_for(owner).get("/nodes/").status_code == 404
    assert client_for(owner).get(f"/nodes/{hidden.name}/").status_code == 404


def test_a_teacher_sees_their_classes_with_running_and_stopped_counts(client_for, teacher, node, plan):
    from vzpanel.classroom.models import Course, Membership

    course = Course.objects.create(name="Networks 101", teacher=teacher, node=node, ostemplate="tiny")
    other = Course.objects.create(name="Someone else's", teacher=make_user("tina", "teacher"), node=node,
                                  ostemplate="tiny")
    for i, status in enumerate(["running", "running", "stopped", None]):
        student = make_user(f"s{i}", "student", plan=plan, teacher=teacher)
        ve = make_ve(student, node, 300 + i, status=status) if status else None
        Membership.objects.create(course=course, user=student, ve=ve)
    Membership.objects.create(course=other, user=make_user("s9", "student"), ve=make_ve(None, node, 399))

    html = page(client_for(teacher))
    assert panel_names(html) == ["my_ves", "classes", "alerts"]
    assert f'data-course="{course.pk}"' in html and f'data-course="{other.pk}"' not in html
    row = html[html.index(f'data-course="{course.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "<td>4</td>" in row  # students
    assert '<td data-count="running">2</td>' in row and '<td data-count="stopped">1</td>' in row


def test_a_reseller_sees_their_customers_ves_only(client_for, node, plan, outsider):
    reseller = make_user("rita-reseller", "reseller")
    customer = make_user("carl-customer", "customer", plan=plan)
    customer.reseller = reseller
    customer.save()
    make_ve(customer, node, 401, hostname="carls-shop")
    make_ve(outsider, node, 402, hostname="not-rita-s")

    html = page(client_for(reseller))
    assert panel_names(html) == ["my_ves", "customer_ves", "alerts"]
    assert "Your customers' VEs: 1 (1 customer)" in html
    assert "carls-shop" in html and "carl-customer" in html
    assert "not-rita-s" not in html


def count_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        page(client)
    return len(queries)


@pytest.mark.parametrize("role", ["admin", "customer", "reseller"])
def test_its_queries_do_not_grow_with_the_number_of_ves(client_for, node, plan, role):
    user = make_user(f"u-{role}", role, plan=plan)
    owner = user
    if role in ("admin", "reseller"):
        owner = make_user("carl", "customer", plan=plan)
        owner.reseller = user if role == "reseller" else None
        owner.save()
    second = Node.objects.create(name="node-b")
    IPPool.objects.create(node=second, name="b-pool", network="198.51.100.0/28")
    add_ves(owner, node, 1000, 5)
    add_ves(owner, second, 2000, 5, status="stopped")
    Task.objects.create(node=node, action="start", status="failed", finished_at=timezone.now())
    client = client_for(user)
    small = count_queries(client)

    add_ves(owner, node, 3000, 95)
    add_ves(owner, second, 4000, 95, status="stopped")
    assert VE.objects.count() == 200
    large = count_queries(client)
    assert large == small, f"{small} queries with 10 VEs, {large} with 200"
    assert small <= 15, small
    html = page(client)
    if role != "admin":
        assert "The first 50 of 200" in html  # a bounded list, with the way to the rest
        assert html.count("data-sparkline=") == 12  # each fetches its own data: only the first rows
