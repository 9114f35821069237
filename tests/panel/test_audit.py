"""The audit log: every change recorded, searchable by admins only."""

from vzpanel.audit.models import AuditEntry


def test_it_records_who_what_which_ve_when_where_and_the_result(client_for, owner, owner_ve):
    client_for(owner).post("/ves/101/stop/", REMOTE_ADDR="192.0.2.10")
    entry = AuditEntry.objects.get(action="ve.stop")
    assert (entry.username, entry.ctid, entry.ip, entry.result) == (owner.username, 101, "192.0.2.10", "queued")
    assert entry.at is not None and entry.task.action == "stop"


def test_admins_search_it(client_for, api_for, admin, owner, outsider, owner_ve):
    client_for(owner).post("/ves/101/stop/", REMOTE_ADDR="192.0.2.10")
    client_for(outsider).post("/account/tokens/", {"name": "x"})
    client = client_for(admin)
    found = lambda query: [e.action for e in client.get(f"/audit/?{query}").context["page"]]  # noqa: E731
    assert found("q=101") == ["ve.stop"]
    assert found("q=192.0.2.10") == ["ve.stop"]
    assert found(f"q={outsider.username}") == ["token.create"]
    assert found("action=ve.&result=queued") == ["ve.stop"]
    assert found("result=failed") == []
    assert client.get("/audit/?since=not-a-date").status_code == 400
    assert [e["action"] for e in api_for(admin).get("/api/audit/?q=101").json()["results"]] == ["ve.stop"]


def test_non_admins_cannot_read_it(client_for, api_for, owner):
    assert client_for(owner).get("/audit/").status_code == 404
    assert api_for(owner).get("/api/audit/").status_code == 403
