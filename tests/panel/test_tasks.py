"""Task lifecycle: claimed once, cancelled while queued, errored with a reference, pushed live."""

import threading

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings

from tests.panel.conftest import wait_task
from vzpanel.asgi import application
from vzpanel.audit.models import AuditEntry
from vzpanel.tasks import queue
from vzpanel.tasks.models import Task
from vzpanel.tasks.runner import Progress, finish, run_task

QUEUE = f"rq:queue:node:{settings.VZPANEL_NODE}"


@pytest.mark.django_db(transaction=True)
def test_it_cancels_a_queued_task_and_never_runs_it(api_for, owner, owner_ve, redis_url):
    api = api_for(owner)
    task_id = api.post("/api/ves/101/stop/").json()["id"]
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 1
    response = api.post(f"/api/tasks/{task_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 0
    assert run_task(task_id) == "not claimed"  # even if a worker got it, the claim fails
    assert Task.objects.get(pk=task_id).status == "cancelled"
    assert AuditEntry.objects.get(action="ve.stop").result == "cancelled"
    assert api.post(f"/api/tasks/{task_id}/cancel/").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_create_gives_the_quota_back(client_for, owner, node):
    client = client_for(owner)
    client.post("/ves/new/", {"ostemplate": "tiny"})
    task = Task.objects.get()
    client.post(f"/tasks/{task.pk}/cancel/")
    task.refresh_from_db()
    assert task.status == "cancelled" and task.ve.status == "destroyed"


def test_it_claims_a_task_only_once(owner_ve, owner):
    task = Task.objects.create(ve=owner_ve, node=owner_ve.node, action="start", user=owner, status="running")
    assert run_task(task.pk) == "not claimed"
    task.refresh_from_db()
    assert task.status == "running" and task.log == ""


@pytest.mark.django_db(transaction=True)
def test_a_bug_in_a_job_ends_errored_with_a_reference_admins_can_look_up(plain_agent, admin, node, client_for):
    task = Task.objects.create(node=node, action="no-such-action", user=admin)
    queue.enqueue(task)
    wait_task(task, timeout=60)
    assert task.status == "errored"
    assert task.error_ref.startswith("E") and task.error_ref in task.error
    assert "Something went wrong on our side" in task.error
    assert "KeyError: 'no-such-action'" in task.traceback
    page = client_for(admin).get(f"/tasks/?q={task.error_ref}")
    assert [t.pk for t in page.context["page"]] == [task.pk]
    assert "KeyError" in client_for(admin).get(f"/tasks/{task.pk}/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_queue_ends_the_task_errored(owner_ve, owner, settings):
    settings.REDIS_URL = "unix:///nonexistent/redis.sock"
    task = Task.objects.create(ve=owner_ve, node=owner_ve.node, action="start", user=owner)
    queue.enqueue(task)
    task.refresh_from_db()
    assert task.status == "errored" and "could not be reached" in task.error


@pytest.mark.django_db(transaction=True)
def test_the_owner_watches_progress_live_over_the_websocket(owner, owner_ve):
    task = Task.objects.create(ve=owner_ve, node=owner_ve.node, action="stop", user=owner, status="running")

    async def watch():
        ws = WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/",
                                   headers=[(b"origin", b"http://testserver"), (b"host", b"testserver")])
        ws.scope["user"] = owner
        connected, _ = await ws.connect(timeout=5)
        assert connected
        first = await ws.receive_json_from(timeout=5)
        # The job reports from another thread, as the node agent does from another process.
        worker = threading.Thread(target=lambda: (Progress(task)(40, "Stopping init"),
                                                  finish(task, "failed", error="VE 101 did not stop")))
        worker.start()
        events = [await ws.receive_json_from(timeout=10), await ws.receive_json_from(timeout=10)]
        worker.join()
        await ws.disconnect()
        return first, events

    first, events = async_to_sync(watch)()
    assert first["snapshot"] and first["task"]["status"] == "running"
    assert (events[0]["task"]["progress"], events[0]["task"]["message"]) == (40, "Stopping init")
    assert events[1]["task"]["finished"] and events[1]["task"]["error"] == "VE 101 did not stop"
    task.refresh_from_db()
    assert task.status == "failed" and "Stopping init" in task.log and task.log_lines == 2
