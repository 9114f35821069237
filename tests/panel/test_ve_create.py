"""Creating VEs: validation, quotas (page and API), and the task it queues."""

import pytest
import redis
from django.conf import settings

from vzpanel.audit.models import AuditEntry
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

GOOD = {"ostemplate": "tiny", "hostname": "web1.example.com", "root_password": "s3cret-pass", "start": "on"}


def test_it_creates_a_ve_and_queues_the_task_on_commit(client_for, owner, node, redis_url,
                                                       django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(owner).post("/ves/new/", GOOD)
    task = Task.objects.get()
    assert response.status_code == 302
    assert response.url == f"/tasks/{task.pk}/"
    assert (task.action, task.status, task.user) == ("create", "queued", owner)
    assert task.ve.owner == owner and task.ve.status == "creating" and task.ve.hostname == "web1.example.com"
    assert task.ve.limits["ram_mb"] == owner.plan.ram_mb
    assert "s3cret-pass" not in str(task.params)  # secrets never reach the database
    queue = f"rq:queue:node:{settings.VZPANEL_NODE}"
    assert redis.Redis.from_url(redis_url).lrange(queue, 0, -1) == [f"task-{task.pk}".encode()]
    entry = AuditEntry.objects.get(action="ve.create")
    assert (entry.user, entry.ctid, entry.ip, entry.result) == (owner, task.ve.ctid, "127.0.0.1", "queued")


def test_it_picks_free_ctids(client_for, owner, owner_ve):
    client_for(owner).post("/ves/new/", GOOD)
    assert VE.objects.get(owner=owner, status="creating").ctid == owner_ve.ctid + 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hostname", "-bad-", "A host name is letters, digits and hyphens"),
        ("hostname", "a" * 64, "A host name is letters"),
        ("root_password", "short", "at least 8 characters"),
        ("ostemplate", "windows-95", "There is no OS template windows-95 that you may use here"),
    ],
)
def test_it_explains_bad_input_and_creates_nothing(client_for, owner, node, field, value, message):
    response = client_for(owner).post("/ves/new/", {**GOOD, field: value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not VE.objects.exists() and not Task.objects.exists()


def test_it_refuses_a_customer_at_the_ve_limit_by_page(client_for, owner, node):
    owner.plan.max_ves = 1
    owner.plan.save()
    assert client_for(owner).post("/ves/new/", GOOD).status_code == 302
    response = client_for(owner).post("/ves/new/", GOOD)
    assert response.status_code == 400
    assert "allows 1 VE(s) and you have 1" in response.content.decode()
    assert VE.objects.count() == 1


def test_it_refuses_a_customer_at_the_ve_limit_by_api(api_for, owner, node):
    api = api_for(owner)
    payload = {"ostemplate": "tiny", "hostname": "a1"}
    assert [api.post("/api/ves/", payload, format="json").status_code for _ in range(3)] == [202, 202, 403]
    assert "allows 2 VE(s) and you have 2" in api.post("/api/ves/", payload, format="json").json()["detail"]
    assert VE.objects.filter(owner=owner).count() == 2


def test_it_gives_the_quota_back_when_a_ve_is_destroyed(api_for, owner, node):
    api = api_for(owner)
    for _ in range(2):
        api.post("/api/ves/", {"ostemplate": "tiny"}, format="json")
    VE.objects.filter(owner=owner).first().tasks.update(status="completed")
    VE.objects.filter(pk=VE.objects.filter(owner=owner).first().pk).update(status="destroyed")
    assert api.post("/api/ves/", {"ostemplate": "tiny"}, format="json").status_code == 202


def test_it_refuses_a_user_without_a_plan(api_for, teacher, node):
    response = api_for(teacher).post("/api/ves/", {"ostemplate": "tiny"}, format="json")
    assert response.status_code == 403
    assert "no plan" in response.json()["detail"]


def test_it_lets_admins_create_for_others_beyond_the_plan(api_for, admin, owner, node):
    owner.plan.max_ves = 0
    owner.plan.save()
    response = api_for(admin).post("/api/ves/", {"ostemplate": "tiny", "owner": owner.username}, format="json")
    assert response.status_code == 202
    assert VE.objects.get().owner == owner


def test_it_does_not_let_customers_create_for_others(api_for, owner, outsider, node):
    response = api_for(owner).post("/api/ves/", {"ostemplate": "tiny", "owner": outsider.username}, format="json")
    assert response.status_code == 400
    assert not VE.objects.exists()


def test_it_validates_api_input(api_for, owner, node):
    api = api_for(owner)
    assert api.post("/api/ves/", {}, format="json").json()["errors"] == {"ostemplate": ["This field is required."]}
    response = api.post("/api/ves/", {"ostemplate": "nope"}, format="json")
    assert response.status_code == 400 and "no OS template 'nope'" in response.json()["detail"]
    response = api.post("/api/ves/", {"ostemplate": "tiny", "hostname": "bad_name"}, format="json")
    assert response.status_code == 400 and "host name" in response.json()["detail"]
    assert not VE.objects.exists()


def test_the_create_form_requires_csrf(owner, node):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post("/ves/new/", GOOD).status_code == 403
    assert not VE.objects.exists()
