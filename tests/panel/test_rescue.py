"""Rescue mode in the panel: the VE page's Rescue / Leave rescue buttons queue tasks that a real node agent runs
on a real VE, the page and reconcile keep the state "rescue", a VE in rescue refuses what would boot or copy its
disk, and nobody but those who may see a VE can rescue it. Engine behaviour is in tests/engine/test_rescue.py."""

import pytest

from tests.panel.conftest import make_ve, wait_task
from vzpanel.audit.models import AuditEntry
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE


def test_the_page_offers_rescue_with_an_explanation_and_queues_it(client_for, owner, owner_ve):
    client = client_for(owner)
    page = client.get("/ves/101/").content.decode()
    assert 'action="/ves/101/rescue/"' in page and 'id="rescue-confirm"' in page and "required" in page
    assert "disk is mounted at <code>/mnt</code>" in page and "The VE is stopped first" in page
    response = client.post("/ves/101/rescue/", {"confirm": "on"})
    assert response.status_code == 302 and response.url == "/ves/101/"
    task = Task.objects.get()
    assert (task.action, task.params, task.status, task.get_action_display()) == (
        "rescue", {}, "queued", "boot into rescue")
    assert AuditEntry.objects.get(action="ve.rescue").task == task


def test_a_ve_in_rescue_offers_only_leave_and_refuses_the_rest_in_words(client_for, owner, node):
    make_ve(owner, node, 101, status="rescue")
    client = client_for(owner)
    page = client.get("/ves/101/").content.decode()
    assert "VE 101 is in rescue mode" in page and 'id="rescue-leave"' in page and 'id="rescue-enter"' not in page
    for action in ("start", "restart", "reinstall", "set_hostname", "rescue"):
        response = client.post(f"/ves/101/{action}/", {"hostname": "x", "ostemplate": "tiny", "confirm": "on"},
                               follow=True)
        assert "VE 101 is in rescue; it cannot" in response.content.decode(), action
        assert "Leave rescue first." in response.content.decode(), action
    for page_action in ("snapshots/new", "backups/new"):
        client.post(f"/ves/101/{page_action}/", {"name": "s1"})
    assert not Task.objects.exists()
    client.post("/ves/101/rescue_leave/", {"confirm": "on"})
    assert Task.objects.get().action == "rescue_leave"


def test_leave_is_refused_when_the_ve_is_not_in_rescue(client_for, owner, owner_ve):
    response = client_for(owner).post("/ves/101/rescue_leave/", follow=True)
    assert "VE 101 is running; it cannot leave rescue now." in response.content.decode()
    assert not Task.objects.exists()


def test_nobody_else_can_rescue_or_release_someone_elses_ve(client_for, owner, outsider, student, node):
    make_ve(owner, node, 101, status="running")
    make_ve(owner, node, 102, status="rescue")
    for user in (outsider, student):
        client = client_for(user)
        for ctid, action in ((101, "rescue"), (102, "rescue_leave")):
            assert client.post(f"/ves/{ctid}/{action}/", {"confirm": "on"}).status_code == 404
            assert client.get(f"/ves/{ctid}/").status_code == 404
    assert not Task.objects.exists()
    assert VE.objects.get(ctid=102).status == "rescue"


def test_the_api_rescues_and_releases_for_the_owner_only_and_never_a_locked_ve(api_for, owner, outsider, node):
    ve = make_ve(owner, node, 101, status="running")
    make_ve(owner, node, 102, status="rescue")
    assert api_for(outsider).post("/api/ves/101/rescue/").status_code == 404
    assert api_for(outsider).post("/api/ves/102/rescue-leave/").status_code == 404
    assert not Task.objects.exists()

    ve.locked = "Suspended by billing: unpaid"
    ve.save()
    refused = api_for(owner).post("/api/ves/101/rescue/")  # a rescue boot would start a locked VE
    assert refused.status_code == 409 and "locked" in refused.json()["detail"]
    assert not Task.objects.exists()

    ve.locked = ""
    ve.save()
    assert api_for(owner).post("/api/ves/101/rescue/").status_code == 202
    assert api_for(owner).post("/api/ves/102/rescue-leave/").status_code == 202
    assert sorted(Task.objects.values_list("action", flat=True)) == ["rescue", "rescue_leave"]


# --- for real: a node agent and a VE of the private engine root ---------------------------------------------

@pytest.fixture
def live_ve(engine, new_ctid, owner, node, plan):
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"rs{ctid}.example")
    engine.start(ctid, wait_boot=True)
    return VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=f"rs{ctid}.example", ostemplate="tiny",
                             status="running")


def run_task(ve, action):
    task = wait_task(Task.objects.filter(ve=ve, action=action).order_by("-id").first(), timeout=300)
    assert task.status == "completed", (task.error, task.traceback, task.log)
    ve.refresh_from_db()
    return task


@pytest.mark.root
@pytest.mark.slow
def test_the_owner_rescues_a_ve_from_its_page_and_it_boots_normally_after(node_agent, engine, live_ve, client_for,
                                                                          owner, outsider, node):
    from vzpanel.nodes.reconcile import reconcile_node

    ctid = live_ve.ctid
    web = client_for(owner)
    assert client_for(outsider).post(f"/ves/{ctid}/rescue/", {"confirm": "on"}).status_code == 404
    web.post(f"/ves/{ctid}/rescue/", {"confirm": "on"})
    run_task(live_ve, "rescue")
    assert live_ve.status == "rescue" and engine.status(ctid).status == "rescue"
    page = web.get(f"/ves/{ctid}/").content.decode()
    assert 'id="ve-state">rescue<' in page and f"VE {ctid} is in rescue mode" in page and 'id="rescue-leave"' in page
    # the rescue system (the node's debian-12-sysv) runs with the VE's own files at /mnt
    seen = engine.exec(ctid, "cat /mnt/etc/hostname; test -x /usr/sbin/sshd && echo sshd")
    assert seen.stdout.split() == [f"rs{ctid}.example", "sshd"]
    # reconcile reads the state from the engine: a row that says otherwise is put right
    VE.objects.filter(pk=live_ve.pk).update(status="running")
    reconcile_node(node.name)
    live_ve.refresh_from_db()
    assert live_ve.status == "rescue"
    assert client_for(outsider).post(f"/ves/{ctid}/rescue_leave/", {"confirm": "on"}).status_code == 404
    assert "Leave rescue first." in web.post(f"/ves/{ctid}/start/", follow=True).content.decode()

    web.post(f"/ves/{ctid}/rescue_leave/", {"confirm": "on"})
    run_task(live_ve, "rescue_leave")
    assert live_ve.status == "running" and engine.status(ctid).status == "running"
    assert engine.exec(ctid, "cat /etc/hostname").stdout.strip() == f"rs{ctid}.example"
    assert not (engine.layout.pool / "rescue" / str(ctid)).exists()
    assert 'id="rescue-enter"' in web.get(f"/ves/{ctid}/").content.decode()
