"""VE pages and actions: list, search, detail, each action queues one task, bad input changes nothing."""

import pytest

from tests.panel.conftest import make_ve
from vzpanel.audit.models import AuditEntry
from vzpanel.tasks.models import Task


@pytest.mark.parametrize(
    ("action", "data", "params"),
    [
        ("stop", {}, {}),
        ("restart", {}, {}),
        ("set_hostname", {"hostname": "New-Name.example"}, {"hostname": "new-name.example"}),
        ("set_password", {"root_password": "s3cret-pass", "confirm": "s3cret-pass"}, {}),
        ("reinstall", {"ostemplate": "tiny", "confirm": "on"}, {"ostemplate": "tiny"}),
    ],
)
def test_it_queues_one_task_per_action(client_for, owner, owner_ve, action, data, params):
    response = client_for(owner).post(f"/ves/101/{action}/", data)
    assert response.status_code == 302 and response.url == "/ves/101/"
    task = Task.objects.get()
    assert (task.action, task.params, task.status) == (action, params, "queued")
    assert AuditEntry.objects.get(action=f"ve.{action}").task == task


def test_it_shows_the_queued_task_on_the_ve_page_at_once(client_for, owner, owner_ve):
    client = client_for(owner)
    client.post("/ves/101/stop/")
    page = client.get("/ves/101/").content.decode()
    task = Task.objects.get()
    assert f'id="task-{task.pk}"' in page and "queued" in page


def test_it_refuses_a_second_task_while_one_is_active(client_for, owner, owner_ve):
    client = client_for(owner)
    client.post("/ves/101/stop/")
    response = client.post("/ves/101/restart/", follow=True)
    assert "is busy with another task (stop" in response.content.decode()
    assert Task.objects.count() == 1


def test_it_refuses_actions_the_state_does_not_allow(client_for, owner, owner_ve):
    response = client_for(owner).post("/ves/101/start/", follow=True)
    assert "VE 101 is running; it cannot start now." in response.content.decode()
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    ("action", "data", "message"),
    [
        ("set_hostname", {"hostname": "under_score"}, "A host name is letters"),
        ("set_password", {"root_password": "s3cret-pass", "confirm": "other-pass"}, "The two passwords differ."),
        ("set_password", {"root_password": "short", "confirm": "short"}, "at least 8 characters"),
        ("reinstall", {"ostemplate": "tiny"}, "This field is required."),
        ("destroy", {"confirm": "999"}, "Type 101 to confirm"),
    ],
)
def test_it_explains_bad_input_and_queues_nothing(client_for, owner, owner_ve, action, data, message):
    response = client_for(owner).post(f"/ves/101/{action}/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Task.objects.exists()


def test_it_destroys_only_with_confirmation_and_shows_the_task(client_for, owner, owner_ve):
    response = client_for(owner).post("/ves/101/destroy/", {"confirm": "101"})
    task = Task.objects.get()
    assert task.action == "destroy"
    assert response.url == f"/tasks/{task.pk}/"


def test_it_lists_searches_filters_and_sorts(client_for, admin, owner, outsider, node):
    for ctid in range(300, 330):
        make_ve(owner if ctid % 2 else outsider, node, ctid, status="running" if ctid % 3 else "stopped")
    client = client_for(admin)
    page = client.get("/ves/?per_page=25").context["page"]
    assert page.paginator.count == 30 and len(page.object_list) == 25
    assert [v.ctid for v in client.get("/ves/?q=ve305").context["page"]] == [305]
    assert {v.ctid for v in client.get("/ves/?status=stopped").context["page"]} == {c for c in range(300, 330)
                                                                                   if c % 3 == 0}
    assert {v.owner for v in client.get("/ves/?owner=olga-outsider").context["page"]} == {outsider}
    assert [v.ctid for v in client.get("/ves/?sort=-ctid").context["page"]][:2] == [329, 328]
    assert client.get("/ves/?sort=bogus").status_code == 400
    partial = client.get("/ves/?q=ve305", headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial and "/ves/305/" in partial


def test_it_bulk_starts_for_admins_and_skips_what_cannot_start(client_for, admin, owner, node):
    for ctid in (400, 401, 402):
        make_ve(owner, node, ctid, status="stopped")
    make_ve(owner, node, 403, status="running")
    response = client_for(admin).post("/ves/bulk/", {"action": "start", "ctids": ["400", "401", "402", "403"]},
                                      follow=True)
    assert sorted(Task.objects.values_list("ve__ctid", flat=True)) == [400, 401, 402]
    assert "3 task(s) queued." in response.content.decode()
    assert "1 VE(s) skipped" in response.content.decode()


def test_bulk_actions_are_for_admins_only(client_for, owner, owner_ve):
    assert client_for(owner).post("/ves/bulk/", {"action": "stop", "ctids": ["101"]}).status_code == 404
    assert not Task.objects.exists()


def test_the_api_covers_the_same_actions(api_for, owner, owner_ve):
    api = api_for(owner)
    response = api.post("/api/ves/101/set-hostname/", {"hostname": "x" * 70}, format="json")
    assert response.status_code == 400
    response = api.post("/api/ves/101/set-password/", {}, format="json")
    assert response.json()["errors"] == {"root_password": ["This field is required."]}
    response = api.post("/api/ves/101/start/")
    assert response.status_code == 409 and "cannot start now" in response.json()["detail"]
    response = api.post("/api/ves/101/set-hostname/", {"hostname": "api-host"}, format="json")
    assert response.status_code == 202 and response["Location"] == f"/api/tasks/{response.json()['id']}/"
    assert api.post("/api/ves/101/stop/").status_code == 409  # busy
    assert api.get("/api/ves/101/").json()["busy"] is True
    assert Task.objects.count() == 1


def test_the_api_has_an_openapi_schema(api_for, owner):
    response = api_for(owner).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/ves/", "/api/ves/{ctid}/start/", "/api/tasks/{id}/cancel/", "/api/audit/"} <= set(paths)
    assert "tokenAuth" in response.json()["components"]["securitySchemes"]
