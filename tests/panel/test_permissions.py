"""The permission matrix: an outsider gets a 404 from every page, API call, task and websocket
about a VE that is not theirs, and nothing changes; owners, teachers and admins get in."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from vzpanel.asgi import application
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE, Backup, Snapshot

CTID = 101
PAGE_GETS = ["/ves/{ctid}/", "/ves/{ctid}/status/", "/ves/{ctid}/console/", "/ves/{ctid}/snapshots/",
             "/ves/{ctid}/backups/"]
BACKUP_ID = 7  # the owner's VE's backup (fixture stored)
PAGE_POSTS = [
    ("/ves/{ctid}/start/", {}),
    ("/ves/{ctid}/stop/", {}),
    ("/ves/{ctid}/restart/", {}),
    ("/ves/{ctid}/reinstall/", {"ostemplate": "tiny", "confirm": "on"}),
    ("/ves/{ctid}/set_password/", {"root_password": "s3cret-pass", "confirm": "s3cret-pass"}),
    ("/ves/{ctid}/set_hostname/", {"hostname": "stolen"}),
    ("/ves/{ctid}/destroy/", {"confirm": "{ctid}"}),
    ("/ves/{ctid}/destroy/", {"confirm": "{ctid}", "delete_backups": "on"}),
    ("/ves/{ctid}/apply-plan/", {}),
    ("/ves/{ctid}/snapshots/new/", {"name": "mine-now"}),
    ("/ves/{ctid}/snapshots/snap1/rollback/", {"confirm": "on"}),
    ("/ves/{ctid}/snapshots/snap1/delete/", {}),
    ("/ves/{ctid}/backups/new/", {}),
    ("/ves/{ctid}/backups/7/restore/", {"confirm": "on"}),
    ("/ves/{ctid}/backups/7/delete/", {}),
    ("/ves/backups/7/delete/", {}),
    ("/ves/{ctid}/backups/7/restore-new/", {"start": "on"}),
    ("/ves/{ctid}/backups/7/restore-new/", {"owner": "olga-outsider", "ctid": "500", "beyond_plan": "on"}),
    ("/ves/backups/7/restore-new/", {"owner": "olga-outsider"}),
]
API_CALLS = [
    ("get", "/api/ves/{ctid}/", None),
    ("get", "/api/ves/{ctid}/tasks/", None),
    ("post", "/api/ves/{ctid}/start/", {}),
    ("post", "/api/ves/{ctid}/stop/", {}),
    ("post", "/api/ves/{ctid}/restart/", {}),
    ("post", "/api/ves/{ctid}/reinstall/", {"ostemplate": "tiny"}),
    ("post", "/api/ves/{ctid}/set-password/", {"root_password": "s3cret-pass"}),
    ("post", "/api/ves/{ctid}/set-hostname/", {"hostname": "stolen"}),
    ("post", "/api/ves/{ctid}/apply-plan/", {}),
    ("delete", "/api/ves/{ctid}/", None),
    ("delete", "/api/ves/{ctid}/?delete_backups=true", None),
    ("get", "/api/ves/{ctid}/snapshots/", None),
    ("post", "/api/ves/{ctid}/snapshots/", {"name": "mine-now"}),
    ("post", "/api/ves/{ctid}/snapshots/snap1/rollback/", {}),
    ("delete", "/api/ves/{ctid}/snapshots/snap1/", None),
    ("get", "/api/ves/{ctid}/backups/", None),
    ("post", "/api/ves/{ctid}/backups/", {}),
    ("post", "/api/ves/{ctid}/backups/7/restore/", {}),
    ("delete", "/api/ves/{ctid}/backups/7/", None),
    ("post", "/api/ves/{ctid}/backups/7/restore-new/", {}),
    ("post", "/api/ves/{ctid}/backups/7/restore-new/", {"owner": "olga-outsider", "beyond_plan": True}),
    ("post", "/api/backups/7/restore-new/", {"owner": "olga-outsider"}),
    ("get", "/api/backups/", None),
]
TASK_PAGES = [("get", "/tasks/{task}/"), ("get", "/tasks/{task}/panel/"), ("post", "/tasks/{task}/cancel/")]
TASK_API = [("get", "/api/tasks/{task}/"), ("post", "/api/tasks/{task}/cancel/")]
WEBSOCKETS = ["/ws/ves/{ctid}/", "/ws/tasks/{task}/"]


@pytest.fixture
def queued_task(owner_ve, owner):
    return Task.objects.create(ve=owner_ve, node=owner_ve.node, action="start", user=owner)


@pytest.fixture
def stored(owner_ve):
    """A snapshot and a backup (id 7) of the owner's VE, for the outsider to aim at."""
    from django.utils import timezone

    Snapshot.objects.create(ve=owner_ve, name="snap1", created_at=timezone.now())
    return Backup.objects.create(pk=BACKUP_ID, ve=owner_ve, node=owner_ve.node, ctid=owner_ve.ctid,
                                 path="/nonexistent/ve-101.tar.zst", created_at=timezone.now())


def snapshot(ve):
    ve.refresh_from_db()
    tasks = list(Task.objects.values_list("id", "status"))
    storage = (list(Snapshot.objects.values_list("id", "name")), list(Backup.objects.values_list("id", "deleted_at")))
    return (ve.status, ve.hostname, ve.owner_id), tasks, storage, list(VE.objects.values_list("ctid", "status"))


def ws_connect(user, path):
    """Open a websocket as user; return (connected, close code or subprotocol)."""

    async def run():
        communicator = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://testserver"),
                                                                         (b"host", b"testserver")])
        communicator.scope["user"] = user
        connected, detail = await communicator.connect(timeout=5)
        message = await communicator.receive_json_from(timeout=5) if connected else None
        await communicator.disconnect()
        return connected, detail, message

    return async_to_sync(run)()


class TestOutsider:
    @pytest.mark.parametrize("path", PAGE_GETS)
    def test_it_gets_404_from_ve_pages(self, client_for, outsider, owner_ve, stored, path):
        assert client_for(outsider).get(path.format(ctid=CTID)).status_code == 404

    @pytest.mark.parametrize(("path", "data"), PAGE_POSTS)
    def test_it_gets_404_from_ve_actions_and_changes_nothing(self, client_for, outsider, owner_ve, queued_task,
                                                              stored, path, data):
        before = snapshot(owner_ve)
        data = {k: v.format(ctid=CTID) for k, v in data.items()}
        assert client_for(outsider).post(path.format(ctid=CTID), data).status_code == 404
        assert snapshot(owner_ve) == before

    @pytest.mark.parametrize(("method", "path", "data"), API_CALLS)
    def test_it_gets_404_from_the_api_and_changes_nothing(self, api_for, outsider, owner_ve, stored, method, path,
                                                          data):
        before = snapshot(owner_ve)
        response = getattr(api_for(outsider), method)(path.format(ctid=CTID), data, format="json")
        assert response.status_code == 404
        assert snapshot(owner_ve) == before

    @pytest.mark.parametrize(("method", "path"), TASK_PAGES + TASK_API)
    def test_it_gets_404_from_task_pages_and_api(self, client_for, api_for, outsider, queued_task, method, path):
        before = snapshot(queued_task.ve)
        url = path.format(task=queued_task.pk)
        client = api_for(outsider) if url.startswith("/api/") else client_for(outsider)
        assert getattr(client, method)(url).status_code == 404
        assert snapshot(queued_task.ve) == before

    @pytest.mark.django_db(transaction=True)
    @pytest.mark.parametrize("path", WEBSOCKETS)
    def test_it_is_refused_by_the_websockets(self, outsider, queued_task, path):
        connected, code, _ = ws_connect(outsider, path.format(ctid=CTID, task=queued_task.pk))
        assert not connected
        assert code == 4404

    def test_it_does_not_see_the_ve_or_its_tasks_in_lists(self, client_for, api_for, outsider, queued_task):
        page = client_for(outsider).get("/ves/?q=101").content.decode()
        assert "/ves/101/" not in page
        assert client_for(outsider).get("/tasks/").context["page"].paginator.count == 0
        assert api_for(outsider).get("/api/ves/").json()["count"] == 0
        assert api_for(outsider).get("/api/tasks/").json()["count"] == 0

    def test_it_cannot_bulk_act_on_other_ves(self, client_for, api_for, outsider, owner_ve):
        assert client_for(outsider).post("/ves/bulk/", {"action": "stop", "ctids": [CTID]}).status_code == 404
        assert api_for(outsider).post("/api/ves/bulk/", {"action": "stop", "ctids": [CTID]},
                                      format="json").status_code == 403
        assert not Task.objects.exists()

    def test_it_gets_404_from_admin_pages(self, client_for, outsider):
        for path in ("/audit/", "/account/users/", "/plans/", "/account/users/new/", "/ves/backups/"):
            assert client_for(outsider).get(path).status_code == 404, path
        assert client_for(outsider).get("/django-admin/").status_code == 302  # Django's own login


class TestAnonymous:
    def test_it_is_sent_to_the_login_page(self, client, owner_ve):
        response = client.get(f"/ves/{CTID}/")
        assert response.status_code == 302
        assert response.url.startswith("/login/")

    def test_it_gets_401_from_the_api(self, client, owner_ve):
        from rest_framework.test import APIClient

        assert APIClient().get(f"/api/ves/{CTID}/").status_code == 401
        bad = APIClient()
        bad.credentials(HTTP_AUTHORIZATION="Token vzp_not-a-real-key")
        assert bad.get("/api/ves/").status_code == 401


class TestOwner:
    @pytest.mark.parametrize("path", PAGE_GETS)
    def test_it_sees_its_ve_pages(self, client_for, owner, owner_ve, stored, path):
        assert client_for(owner).get(path.format(ctid=CTID)).status_code == 200

    @pytest.mark.parametrize(("method", "path"), TASK_PAGES[:2] + TASK_API[:1])
    def test_it_sees_its_tasks(self, client_for, api_for, owner, queued_task, method, path):
        url = path.format(task=queued_task.pk)
        client = api_for(owner) if url.startswith("/api/") else client_for(owner)
        assert getattr(client, method)(url).status_code == 200

    @pytest.mark.django_db(transaction=True)
    @pytest.mark.parametrize("path", WEBSOCKETS)
    def test_it_is_let_in_by_the_websockets(self, owner, queued_task, path):
        connected, _, message = ws_connect(owner, path.format(ctid=CTID, task=queued_task.pk))
        assert connected
        assert message["snapshot"] is True

    def test_it_stops_its_ve_through_the_api(self, api_for, owner, owner_ve):
        response = api_for(owner).post(f"/api/ves/{CTID}/stop/")
        assert response.status_code == 202
        assert response.json()["action"] == "stop"


@pytest.fixture
def enrolled(teacher, student, student_ve, node):
    """The student in a course of the teacher's, with VE 201 as their course VE: the teacher's only way in."""
    from vzpanel.classroom.models import Course, Membership

    course = Course.objects.create(name="Networks", teacher=teacher, node=node, ostemplate="tiny")
    return Membership.objects.create(course=course, user=student, ve=student_ve)


class TestTeacher:
    def test_it_sees_its_students_ves(self, client_for, api_for, teacher, student_ve, owner_ve, enrolled):
        assert client_for(teacher).get("/ves/201/").status_code == 200
        assert [v["ctid"] for v in api_for(teacher).get("/api/ves/").json()["results"]] == [201]

    def test_it_does_not_see_other_customers_ves(self, client_for, teacher, student_ve, owner_ve):
        assert client_for(teacher).get(f"/ves/{CTID}/").status_code == 404

    def test_it_does_not_see_a_students_ve_outside_a_course(self, client_for, teacher, student_ve):
        # the account's `teacher` link alone grants nothing: only a current course membership does
        assert client_for(teacher).get("/ves/201/").status_code == 404

    def test_it_can_start_a_students_ve(self, client_for, teacher, student_ve, enrolled):
        response = client_for(teacher).post("/ves/201/start/")
        assert response.status_code == 302
        assert Task.objects.get().user == teacher


class TestAdmin:
    def test_it_sees_every_ve(self, client_for, api_for, admin, owner_ve, student_ve):
        assert client_for(admin).get(f"/ves/{CTID}/").status_code == 200
        assert api_for(admin).get("/api/ves/").json()["count"] == 2

    def test_it_sees_no_destroyed_ve_pages(self, client_for, admin, owner_ve):
        VE.objects.filter(pk=owner_ve.pk).update(status="destroyed")
        assert client_for(admin).get(f"/ves/{CTID}/").status_code == 404

    def test_only_it_reaches_a_destroyed_ves_kept_backups(self, client_for, api_for, admin, owner, teacher, owner_ve,
                                                          stored):
        VE.objects.filter(pk=owner_ve.pk).update(status="destroyed")
        for user in (owner, teacher):
            assert client_for(user).get("/ves/backups/").status_code == 404
            assert client_for(user).post(f"/ves/backups/{BACKUP_ID}/delete/").status_code == 404
            assert api_for(user).get(f"/api/ves/{CTID}/backups/").status_code == 404
        assert not Task.objects.exists()
        assert "/nonexistent/ve-101.tar.zst" in client_for(admin).get("/ves/backups/").content.decode()
        assert client_for(admin).post(f"/ves/backups/{BACKUP_ID}/delete/").status_code == 302
        assert Task.objects.get().action == "backup_delete"
