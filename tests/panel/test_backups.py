"""Snapshots and backups of a VE from the panel: pages, API, plan limits, destroy, permissions, bad input.

The live tests drive a real node agent and a real tiny VE of the private engine root (files are written and
checked inside the VE with engine.exec); the others check refusals and permissions on the panel alone (no
task ever runs there).
"""

from pathlib import Path

import pytest

from tests.panel.conftest import make_ve, wait_task
from vzpanel.audit.models import AuditEntry
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE, Backup, Snapshot


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def state(ve):
    """What must not change when a request is refused."""
    ve.refresh_from_db()
    return (ve.status, list(Task.objects.values_list("id", "status")),
            list(Snapshot.objects.values_list("id", "name")),
            list(Backup.objects.values_list("id", "deleted_at")))


@pytest.fixture
def live_ve(engine, new_ctid, owner, node, plan):
    """A running tiny VE of the owner; new_ctid destroys it after the test, its backup files go too."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"bk{ctid}")
    engine.start(ctid, wait_boot=True)
    ve = VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=f"bk{ctid}", ostemplate="tiny",
                           status="running")
    yield ve
    for path in (engine.layout.root / "backups").glob(f"ve-{ctid}-*"):
        path.unlink(missing_ok=True)


def one_task(ve, action) -> Task:
    task = Task.objects.filter(ve=ve, action=action).order_by("-id").first()
    assert task is not None, f"no {action} task"
    task = wait_task(task, timeout=60)
    assert task.status == "completed", (task.error, task.traceback, task.log)
    return task


def has(engine, ctid, path) -> bool:
    return engine.exec(ctid, f"test -e {path}").returncode == 0


# --- live: real agent, real VE ----------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_snapshot_then_roll_back_removes_a_file_written_since(node_agent, engine, live_ve, client_for, api_for,
                                                             owner):
    ctid = live_ve.ctid
    web = client_for(owner)
    init_pid = engine.lxc.init_pid(ctid)
    response = web.post(f"/ves/{ctid}/snapshots/new/", {"name": "clean", "description": "before the marker"},
                        follow=True)
    assert "Take snapshot of VE" in " ".join(messages_of(response))
    one_task(live_ve, "snapshot")
    assert engine.lxc.init_pid(ctid) == init_pid  # the VE kept running
    snap = Snapshot.objects.get(ve=live_ve)
    assert (snap.name, snap.description, snap.ve_state) == ("clean", "before the marker", "running")
    assert snap.size_bytes and snap.size_bytes > 0
    page = web.get(f"/ves/{ctid}/snapshots/").content.decode()
    assert 'data-snapshot="clean"' in page and "it restarts if running" in page

    assert engine.exec(ctid, "echo later > /root/marker").returncode == 0
    response = web.post(f"/ves/{ctid}/snapshots/clean/rollback/", {}, follow=True)  # not confirmed
    assert "Tick the box to confirm" in " ".join(messages_of(response))
    assert not Task.objects.filter(action="snapshot_rollback").exists()
    web.post(f"/ves/{ctid}/snapshots/clean/rollback/", {"confirm": "on"})
    one_task(live_ve, "snapshot_rollback")
    live_ve.refresh_from_db()
    assert live_ve.status == "running" and engine.is_running(ctid)
    assert not has(engine, ctid, "/root/marker")

    response = api_for(owner).delete(f"/api/ves/{ctid}/snapshots/clean/")
    assert response.status_code == 202
    one_task(live_ve, "snapshot_delete")
    assert engine.snapshot_list(ctid) == [] and not Snapshot.objects.exists()
    assert api_for(owner).get(f"/api/ves/{ctid}/snapshots/").json() == []


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_back_up_restore_and_rotate_by_the_plan(node_agent, engine, live_ve, client_for, api_for, owner, plan):
    plan.max_backups = 2
    plan.save()
    ctid = live_ve.ctid
    api, web = api_for(owner), client_for(owner)
    assert engine.exec(ctid, "echo keep > /root/precious").returncode == 0
    response = api.post(f"/api/ves/{ctid}/backups/")
    assert response.status_code == 202
    one_task(live_ve, "backup")
    first = Backup.objects.get(ve=live_ve)
    assert first.verified_at is not None and first.size_bytes > 0 and Path(first.path).is_file()
    listed = api.get(f"/api/ves/{ctid}/backups/").json()
    assert [(b["id"], b["verified"]) for b in listed] == [(first.pk, True)]

    assert engine.exec(ctid, "rm /root/precious").returncode == 0
    web.post(f"/ves/{ctid}/backups/{first.pk}/restore/", {"confirm": "on"})
    one_task(live_ve, "restore")
    assert engine.is_running(ctid)
    assert engine.exec(ctid, "cat /root/precious").stdout.strip() == "keep"

    # the plan keeps 2: the third backup removes the oldest (row marked, file gone)
    for _ in range(2):
        web.post(f"/ves/{ctid}/backups/new/")
        one_task(live_ve, "backup")
    first.refresh_from_db()
    assert first.deleted_at is not None and "rotated out" in first.deleted_why
    assert not Path(first.path).exists()
    kept = list(Backup.objects.kept().filter(ve=live_ve))
    assert len(kept) == 2 and all(Path(b.path).is_file() for b in kept)
    page = web.get(f"/ves/{ctid}/backups/").content.decode()
    assert f'data-backup="{first.pk}"' not in page and page.count("verified</span>") == 2

    # delete one, then again: the second is refused in words
    newest = kept[0]
    response = api.delete(f"/api/ves/{ctid}/backups/{newest.pk}/")
    assert response.status_code == 202
    assert api.delete(f"/api/ves/{ctid}/backups/{newest.pk}/").json()["detail"] == (
        f"Backup {newest.pk} of VE {ctid} is already being deleted (task {response.json()['id']}).")
    one_task(live_ve, "backup_delete")
    assert not Path(newest.path).exists()
    response = api.delete(f"/api/ves/{ctid}/backups/{newest.pk}/")
    assert response.status_code == 409 and "was already deleted" in response.json()["detail"]
    assert AuditEntry.objects.filter(action="ve.restore", ctid=ctid).exists()


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_destroy_keeps_backups_unless_asked_and_only_admins_reach_kept_ones(node_agent, engine, live_ve,
                                                                           client_for, api_for, owner, admin):
    ctid = live_ve.ctid
    api_for(owner).post(f"/api/ves/{ctid}/backups/")
    backup = Backup.objects.get(pk=one_task(live_ve, "backup").result["backup"])
    page = client_for(owner).get(f"/ves/{ctid}/").content.decode()
    assert 'name="delete_backups"' in page and "Also delete its backups" in page
    client_for(owner).post(f"/ves/{ctid}/destroy/", {"confirm": str(ctid)})  # box left unticked: keep
    one_task(live_ve, "destroy")
    assert Path(backup.path).is_file()
    assert api_for(owner).get(f"/api/ves/{ctid}/backups/").status_code == 404
    assert api_for(owner).delete(f"/api/ves/{ctid}/backups/{backup.pk}/").status_code == 404
    for path in (f"/ves/{ctid}/backups/", "/ves/backups/"):
        assert client_for(owner).get(path).status_code == 404
    assert client_for(owner).post(f"/ves/backups/{backup.pk}/delete/").status_code == 404
    assert Path(backup.path).is_file()
    page = client_for(admin).get("/ves/backups/").content.decode()
    assert backup.path in page
    client_for(admin).post(f"/ves/backups/{backup.pk}/delete/")
    one_task(live_ve, "backup_delete")
    assert not Path(backup.path).exists()


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_reconcile_reads_snapshots_made_outside_and_queues_the_daily_backup(node_agent, engine, engine_root,
                                                                           live_ve, plan, monkeypatch):
    from vzpanel.nodes.reconcile import reconcile_node

    monkeypatch.setenv("VZ_ROOT", str(engine_root))  # for the reconcile run in this process
    plan.backup_daily = True
    plan.save()
    engine.snapshot(live_ve.ctid, "by-hand", "made with vzctl")
    counts = reconcile_node(live_ve.node.name)
    assert counts["snapshots_synced"] == 1 and counts["daily_backups"] == 1
    assert Snapshot.objects.get(ve=live_ve).description == "made with vzctl"
    task = one_task(live_ve, "backup")
    assert task.user is None and task.params == {"automatic": True}
    assert Backup.objects.get(ve=live_ve).automatic
    counts = reconcile_node(live_ve.node.name)  # backed up today: not again
    assert counts["snapshots_synced"] == 0 and counts["daily_backups"] == 0
    assert Task.objects.filter(action="backup").count() == 1


# --- the panel alone: refusals in words, nothing changes ---------------------------------------------------


@pytest.fixture
def stored(owner_ve, node):
    """A snapshot and a backup row of the owner's VE (no engine behind them: no task runs here)."""
    from django.utils import timezone

    Snapshot.objects.create(ve=owner_ve, name="snap1", created_at=timezone.now(), size_bytes=1 << 20)
    return Backup.objects.create(ve=owner_ve, node=node, ctid=owner_ve.ctid, path="/nonexistent/ve-101-x.tar.zst",
                                 size_bytes=5 << 20, created_at=timezone.now(), verified_at=timezone.now())


def test_bad_snapshot_names_are_refused_in_words(client_for, api_for, owner, owner_ve, stored):
    before = state(owner_ve)
    response = client_for(owner).post("/ves/101/snapshots/new/", {"name": "../etc/passwd"})
    assert response.status_code == 400
    assert "is not a valid snapshot name" in response.content.decode()
    response = api_for(owner).post("/api/ves/101/snapshots/", {"name": "-dash first"}, format="json")
    assert response.status_code == 400 and "is not a valid snapshot name" in response.json()["detail"]
    response = api_for(owner).post("/api/ves/101/snapshots/", {"name": "snap1"}, format="json")
    assert response.json()["detail"] == "VE 101 already has a snapshot named 'snap1'; choose another name."
    response = api_for(owner).post("/api/ves/101/snapshots/nope/rollback/")
    assert response.status_code == 404 and response.json()["detail"] == "VE 101 has no snapshot 'nope'."
    response = client_for(owner).post("/ves/101/snapshots/snap1/rollback/", {"confirm": "on"}, follow=True)
    assert "Roll back to snapshot of VE 101 queued" in " ".join(messages_of(response))
    Task.objects.all().delete()
    assert state(owner_ve) == before


def test_a_snapshot_beyond_the_plan_is_refused(api_for, owner, owner_ve, stored, plan, admin):
    plan.max_snapshots = 1
    plan.save()
    before = state(owner_ve)
    response = api_for(owner).post("/api/ves/101/snapshots/", {}, format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == ("VE 101 has 1 snapshot(s) and its plan small allows 1. "
                                         "Delete one before taking another.")
    assert state(owner_ve) == before
    assert api_for(admin).post("/api/ves/101/snapshots/", {}, format="json").status_code == 202  # admins may


def test_backups_refused_by_a_plan_without_them(api_for, owner, owner_ve, plan):
    plan.max_backups = 0
    plan.save()
    response = api_for(owner).post("/api/ves/101/backups/")
    assert response.status_code == 403 and "includes no backups" in response.json()["detail"]
    assert not Task.objects.exists()


def test_restoring_another_ves_backup_is_refused_in_words(client_for, api_for, owner, outsider, owner_ve, node,
                                                          stored):
    mine = make_ve(owner, node, 102)
    theirs = make_ve(outsider, node, 103)
    other = Backup.objects.create(ve=theirs, node=node, ctid=103, path="/nonexistent/ve-103.tar.zst",
                                  created_at=stored.created_at)
    before = state(owner_ve)
    api = api_for(owner)
    response = api.post(f"/api/ves/102/backups/{stored.pk}/restore/")
    assert response.status_code == 400
    assert response.json()["detail"] == (f"Backup {stored.pk} is a backup of VE 101, not of VE 102: a backup is "
                                         "restored over (or deleted from) the VE it was taken of.")
    # a backup of a VE one may not see is answered like one that does not exist
    assert api.post(f"/api/ves/101/backups/{other.pk}/restore/").json()["detail"] == f"VE 101 has no backup {other.pk}."
    assert api.post("/api/ves/101/backups/99999/restore/").json()["detail"] == "VE 101 has no backup 99999."
    assert api.post("/api/ves/101/backups/abc/restore/").json()["detail"] == "A backup is named by its number (got 'abc')."
    response = client_for(owner).post(f"/ves/102/backups/{stored.pk}/restore/", {"confirm": "on"}, follow=True)
    assert "is a backup of VE 101, not of VE 102" in " ".join(messages_of(response))
    response = client_for(owner).post(f"/ves/101/backups/{stored.pk}/restore/", {}, follow=True)
    assert "Tick the box to confirm: nothing was changed." in messages_of(response)
    assert state(owner_ve) == before and mine.tasks.count() == 0


def test_deleting_a_deleted_backup_is_refused_in_words(api_for, owner, owner_ve, stored):
    from django.utils import timezone

    Backup.objects.filter(pk=stored.pk).update(deleted_at=timezone.now(), deleted_why="deleted by oscar-owner")
    before = state(owner_ve)
    response = api_for(owner).delete(f"/api/ves/101/backups/{stored.pk}/")
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"Backup {stored.pk} of VE 101 was already deleted (")
    assert state(owner_ve) == before
    assert api_for(owner).get("/api/ves/101/backups/").json() == []


def test_destroy_asks_about_backups_and_keeps_them_by_default(client_for, api_for, owner, owner_ve, stored):
    client_for(owner).post("/ves/101/destroy/", {"confirm": "101"})
    task = Task.objects.get()
    assert task.params == {"delete_backups": False}
    assert AuditEntry.objects.get(action="ve.destroy").detail == "keeping its 1 backup(s)"
    task.delete()
    response = api_for(owner).delete("/api/ves/101/?delete_backups=true")
    assert response.status_code == 202 and Task.objects.get().params == {"delete_backups": True}
    Task.objects.all().delete()
    assert api_for(owner).delete("/api/ves/101/?delete_backups=perhaps").status_code == 400
    assert not Task.objects.exists()


def test_the_ve_page_shows_usage_a_customer_can_read(client_for, owner, owner_ve):
    from django.utils import timezone

    owner_ve.usage = {"memory_bytes": 100 << 20, "memory_limit_bytes": 256 << 20, "disk_bytes": 300 << 20,
                      "disk_limit_bytes": 2 << 30, "cpu_seconds": 125.5, "nproc": 7, "nproc_limit": 128,
                      "io_read_bytes": 5}
    owner_ve.usage_at = timezone.now()
    owner_ve.save()
    page = client_for(owner).get("/ves/101/").content.decode()
    usage = page[page.index('id="ve-usage"'):]
    usage = usage[:usage.index("</dd>")]
    for text in ("<strong>100 MiB</strong> <span class=\"text-body-secondary\">of 256 MiB</span>",
                 "<strong>300 MiB</strong> <span class=\"text-body-secondary\">of 2.0 GiB</span>",
                 "<strong>2 min 5 s</strong>", "<strong>7</strong> <span class=\"text-body-secondary\">of 128</span>"):
        assert text in usage, text
    assert "io_read_bytes" not in usage and 'aria-valuenow="39"' in usage


def test_plan_form_has_the_backup_fields(client_for, admin, plan):
    from tests.panel.test_plan_changes import plan_data

    web = client_for(admin)
    assert web.post(f"/plans/{plan.pk}/", plan_data(plan, max_backups=5, max_snapshots=0,
                                                    backup_daily="on")).status_code == 302
    plan.refresh_from_db()
    assert (plan.max_backups, plan.max_snapshots, plan.backup_daily) == (5, 0, True)
    assert web.post(f"/plans/{plan.pk}/", plan_data(plan)).status_code == 302  # fields left out: kept
    plan.refresh_from_db()
    assert (plan.max_backups, plan.max_snapshots) == (5, 0)
    response = web.post(f"/plans/{plan.pk}/", {**plan_data(plan), "max_backups": 1000})
    assert response.status_code == 400


def test_the_schema_lists_snapshots_and_backups(api_for, owner):
    response = api_for(owner).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"get", "post"} <= set(paths["/api/ves/{ctid}/snapshots/"])
    assert "post" in paths["/api/ves/{ctid}/snapshots/{name}/rollback/"]
    assert "delete" in paths["/api/ves/{ctid}/snapshots/{name}/"]
    assert {"get", "post"} <= set(paths["/api/ves/{ctid}/backups/"])
    assert "post" in paths["/api/ves/{ctid}/backups/{backup_id}/restore/"]
    assert "delete" in paths["/api/ves/{ctid}/backups/{backup_id}/"]
    assert "post" in paths["/api/ves/{ctid}/backups/{backup_id}/restore-new/"]
    assert "post" in paths["/api/backups/{id}/restore-new/"] and "get" in paths["/api/backups/"]
    body = paths["/api/backups/{id}/restore-new/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RestoreNew"}


# --- a backup restored as a new VE ---------------------------------------------------------------------------


@pytest.fixture
def restored_cleanup(engine, node_agent):
    """After the test: remove every VE the panel made (restored ones get CTIDs new_ctid did not hand out) and
    their backup files, even when the test failed. Runs before the agent stops and the database is flushed."""
    yield
    for ctid in set(VE.objects.values_list("ctid", flat=True)):
        if engine.exists(ctid):
            engine.destroy(ctid)
        for path in (engine.layout.root / "backups").glob(f"ve-{ctid}-*"):
            path.unlink(missing_ok=True)


def new_ves(before: set) -> list:
    return list(VE.objects.exclude(pk__in=before))


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_an_admin_restores_a_destroyed_ves_kept_backup_as_a_new_ve_for_its_former_owner(
        node_agent, restored_cleanup, engine, live_ve, client_for, api_for, owner, admin, plan):
    ctid = live_ve.ctid
    assert engine.exec(ctid, "echo before-the-backup > /root/marker").returncode == 0
    api_for(owner).post(f"/api/ves/{ctid}/backups/")
    backup = Backup.objects.get(pk=one_task(live_ve, "backup").result["backup"])
    api_for(owner).delete(f"/api/ves/{ctid}/")  # keeps its backups
    one_task(live_ve, "destroy")
    assert not engine.exists(ctid)

    web = client_for(admin)
    page = web.get("/ves/backups/").content.decode()
    form = page[page.index(f'data-restore-new="{backup.pk}"'):]
    assert 'name="owner"' in form and 'value="oscar-owner"' in form and "(next free)" in form
    before = set(VE.objects.values_list("pk", flat=True))
    response = web.post(f"/ves/backups/{backup.pk}/restore-new/", {"start": "on"}, follow=True)
    assert "is being restored as new VE" in " ".join(messages_of(response))
    [new] = new_ves(before)
    task = one_task(new, "restore_new")
    new.refresh_from_db()
    assert new.ctid == ctid + 1 and new.owner == owner and new.status == "running"  # the next free CTID
    assert new.limits == plan.limits() and new.hostname == f"ve{new.ctid}"
    assert engine.is_running(new.ctid) and engine.status(new.ctid).hostname == f"ve{new.ctid}"
    assert engine.exec(new.ctid, "cat /root/marker").stdout.strip() == "before-the-backup"
    assert engine.exec(new.ctid, "hostname").stdout.strip() == f"ve{new.ctid}"
    assert task.user == admin and task.params["backup"] == backup.pk
    assert AuditEntry.objects.get(action="ve.restore_new", ctid=new.ctid).result == "completed"
    assert AuditEntry.objects.filter(action="ve.backup_restore_new", ctid=ctid).exists()
    # it is the owner's like any other: their page, their API, their stop
    assert client_for(owner).get(f"/ves/{new.ctid}/").status_code == 200
    assert api_for(owner).post(f"/api/ves/{new.ctid}/stop/").status_code == 202
    one_task(new, "stop")
    assert not engine.is_running(new.ctid)


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_customer_restores_their_live_ves_backup_as_a_new_ve_with_an_identity_of_its_own(
        node_agent, restored_cleanup, engine, new_ctid, node, client_for, api_for, owner, plan):
    ctid = new_ctid()
    info = engine.create(ctid, "tiny", hostname=f"src{ctid}", ipadd=["auto"])
    engine.start(ctid, wait_boot=True)
    source = VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=f"src{ctid}", ostemplate="tiny",
                               status="running", ip_addresses=info.ip_addresses)
    assert engine.exec(ctid, "echo mine > /root/marker").returncode == 0
    api = api_for(owner)
    api.post(f"/api/ves/{ctid}/backups/")
    backup = Backup.objects.get(pk=one_task(source, "backup").result["backup"])
    page = client_for(owner).get(f"/ves/{ctid}/backups/").content.decode()
    form = page[page.index(f'data-restore-new="{backup.pk}"'):]
    form = form[:form.index("</form>")]
    assert "Restore as a new VE" in form and 'name="owner"' not in form and 'name="ctid"' not in form

    response = api.post(f"/api/ves/{ctid}/backups/{backup.pk}/restore-new/", {"hostname": "copy1"}, format="json")
    assert response.status_code == 202, response.json()
    new = VE.objects.get(ctid=response.json()["ve"])
    one_task(new, "restore_new")
    new.refresh_from_db()
    assert new.ctid != ctid and new.owner == owner and new.status == "running"
    assert engine.is_running(ctid) and engine.is_running(new.ctid)  # both run
    assert new.ip_addresses and not set(new.ip_addresses) & set(source.ip_addresses)
    assert engine.status(ctid).ip_addresses == source.ip_addresses  # the source kept its own

    def read(c, command):
        return engine.exec(c, command).stdout.strip()

    assert read(new.ctid, "cat /root/marker") == "mine"
    assert (read(ctid, "hostname"), read(new.ctid, "hostname")) == (f"src{ctid}", "copy1")
    for what in ("cat /sys/class/net/eth0/address", "cat /etc/machine-id", "ip -4 -o addr show dev eth0"):
        assert read(ctid, what) != read(new.ctid, what), what
    assert new.ip_addresses[0] in read(new.ctid, "ip -4 -o addr show dev eth0")

    # the plan (2 VEs) is full now: refused in words, nothing made
    count, tasks = VE.objects.count(), Task.objects.count()
    response = client_for(owner).post(f"/ves/{ctid}/backups/{backup.pk}/restore-new/", {"start": "on"}, follow=True)
    assert ("Your plan small allows 2 VE(s) and you have 2. Destroy one or ask an admin for a bigger plan."
            in messages_of(response))
    assert (VE.objects.count(), Task.objects.count()) == (count, tasks)


def test_restoring_as_a_new_ve_refuses_bad_ctids_in_words_and_makes_nothing(client_for, api_for, admin, owner_ve,
                                                                           stored, plan):
    plan.max_ves = 5
    plan.save()
    before = (state(owner_ve), VE.objects.count())
    web, api = client_for(admin), api_for(admin)
    for ctid, words in (("101", "CTID 101 is taken by a VE; leave the CTID empty for the next free one (102)."),
                        ("5", "CTID 5 is out of range: a CTID is from 100 to 999999999."),
                        ("1000000000", "CTID 1000000000 is out of range"),
                        ("12a", "A CTID is a whole number from 100 to 999999999 (got '12a').")):
        for url in (f"/ves/101/backups/{stored.pk}/restore-new/", f"/ves/backups/{stored.pk}/restore-new/"):
            response = web.post(url, {"ctid": ctid, "start": "on"}, follow=True)
            assert words in " ".join(messages_of(response)), (url, ctid)
    response = api.post(f"/api/backups/{stored.pk}/restore-new/", {"ctid": 5}, format="json")
    assert response.status_code == 400 and "out of range" in response.json()["detail"]
    response = api.post(f"/api/ves/101/backups/{stored.pk}/restore-new/", {"ctid": 101}, format="json")
    assert response.status_code == 400 and "CTID 101 is taken" in response.json()["detail"]
    response = api.post(f"/api/ves/101/backups/{stored.pk}/restore-new/", {"hostname": "-bad-"}, format="json")
    assert response.status_code == 400 and "A host name is letters" in response.json()["detail"]
    response = web.post(f"/ves/backups/{stored.pk}/restore-new/", {"owner": "nobody"}, follow=True)
    assert "Owner: There is no user named 'nobody'. Nothing was restored." in messages_of(response)
    assert (state(owner_ve), VE.objects.count()) == before


def test_restoring_as_a_new_ve_keeps_to_the_plan_and_to_the_owner(client_for, api_for, admin, owner, outsider,
                                                                 teacher, student, owner_ve, node, stored, plan):
    plan.max_ves = 1  # the owner has VE 101
    plan.save()
    student_ve = make_ve(student, node, 201)
    from vzpanel.classroom.models import Course, Membership

    # the teacher sees the student's VE only through a current course of theirs
    course = Course.objects.create(name="Networks", teacher=teacher, node=node, ostemplate="tiny")
    Membership.objects.create(course=course, user=student, ve=student_ve)
    theirs = Backup.objects.create(ve=student_ve, node=node, ctid=201, path="/nonexistent/ve-201.tar.zst",
                                   created_at=stored.created_at)
    before = (state(owner_ve), VE.objects.count())
    api = api_for(owner)
    response = api.post(f"/api/ves/101/backups/{stored.pk}/restore-new/", {}, format="json")
    assert response.status_code == 403 and response.json()["detail"] == (
        "Your plan small allows 1 VE(s) and you have 1. Destroy one or ask an admin for a bigger plan.")
    for data, words in (({"ctid": 500}, "Only admins choose the CTID"),
                        ({"owner": "olga-outsider"}, "Only admins can restore a backup as a VE of another user."),
                        ({"beyond_plan": True}, "Only admins can restore a VE beyond a plan.")):
        response = api.post(f"/api/ves/101/backups/{stored.pk}/restore-new/", data, format="json")
        assert response.status_code == 400 and words in response.json()["detail"]
    # the admin route and page are admins' only: 404 for the owner too
    assert api.post(f"/api/backups/{stored.pk}/restore-new/", {}, format="json").status_code == 404
    assert api.get("/api/backups/").status_code == 404
    assert client_for(owner).post(f"/ves/backups/{stored.pk}/restore-new/").status_code == 404
    # a teacher who sees a student's VE may not copy it
    response = api_for(teacher).post(f"/api/ves/201/backups/{theirs.pk}/restore-new/", {}, format="json")
    assert response.status_code == 403 and response.json()["detail"] == (
        "Only the owner of VE 201 or an admin can restore its backups as a new VE.")
    assert (state(owner_ve), VE.objects.count()) == before

    # an admin, beyond the owner's plan; the backup's file stays while it is restored; cancel gives the VE back
    response = api_for(admin).post(f"/api/ves/101/backups/{stored.pk}/restore-new/", {"beyond_plan": True},
                                   format="json")
    assert response.status_code == 202, response.json()
    task = Task.objects.get(pk=response.json()["id"])
    new = task.ve
    assert (new.ctid, new.owner, new.status, new.hostname) == (202, owner, "creating", "ve202")
    assert new.limits == plan.limits() and task.params == {
        "backup": stored.pk, "source": 101, "hostname": "ve202", "start": True, "addresses": {"4": 1, "6": 0}}
    assert AuditEntry.objects.get(action="ve.restore_new").detail.endswith("owner oscar-owner, beyond plan")
    assert AuditEntry.objects.get(action="ve.backup_restore_new").detail == (
        f"backup {stored.pk} restored as new VE 202 (task {task.pk})")
    response = api.delete(f"/api/ves/101/backups/{stored.pk}/")
    assert response.status_code == 409 and response.json()["detail"] == (
        f"Backup {stored.pk} of VE 101 is being restored as new VE 202 (task {task.pk}); delete it once that has "
        "finished.")
    assert api_for(admin).post(f"/api/tasks/{task.pk}/cancel/").status_code == 200
    new.refresh_from_db()
    assert new.status == "destroyed"

    # a destroyed VE's kept backup: by default for its former owner, whose plan counts
    VE.objects.filter(pk=owner_ve.pk).update(status="destroyed")
    make_ve(owner, node, 102)
    assert [b["id"] for b in api_for(admin).get("/api/backups/").json()] == [stored.pk]
    response = api_for(admin).post(f"/api/backups/{stored.pk}/restore-new/", {}, format="json")
    assert response.status_code == 403 and response.json()["detail"] == (
        "The plan small of oscar-owner allows 1 VE(s) and they have 1. Tick “beyond the plan” to restore anyway.")
    response = client_for(admin).post(f"/ves/backups/{stored.pk}/restore-new/",
                                      {"owner": "olga-outsider", "ctid": "101", "hostname": "Back.Example.COM"})
    task = Task.objects.filter(action="restore_new").order_by("-id").first()
    assert response.status_code == 302 and response.url == f"/tasks/{task.pk}/"
    # its own CTID again: it keeps its own host name unless one is given
    assert (task.ve.ctid, task.ve.owner, task.ve.hostname) == (101, outsider, "back.example.com")
    assert task.params["start"] is False
