"""API tokens: made on the tokens page with a scope and an expiry; a read-only token reads and changes nothing,
an expired one is refused."""

from datetime import timedelta

from django.utils import timezone

from vzpanel.accounts.models import APIToken
from vzpanel.tasks.models import Task


def token_client(key):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_the_tokens_page_makes_a_read_only_token_that_expires(client_for, owner):
    page = client_for(owner).post("/account/tokens/", {"name": "monitoring", "scope": "read", "days": "30"})
    assert page.status_code == 200 and "copy it now" in page.content.decode()
    token = APIToken.objects.get(user=owner, name="monitoring")
    assert token.scope == "read"
    assert timedelta(days=29, hours=23) < token.expires_at - timezone.now() <= timedelta(days=30)
    bad = client_for(owner).post("/account/tokens/", {"name": "x", "scope": "root", "days": "0"})
    assert "Select a valid choice" in bad.content.decode() and "greater than or equal to 1" in bad.content.decode()
    assert not APIToken.objects.filter(name="x").exists()


def test_a_read_only_token_reads_and_changes_nothing(owner, owner_ve):
    _, key = APIToken.issue(owner, "ro", scope="read")
    api = token_client(key)
    assert api.get("/api/ves/101/").status_code == 200
    for method, url in (("post", "/api/ves/101/stop/"), ("post", "/api/ves/101/snapshots/"),
                        ("delete", "/api/ves/101/"), ("post", "/api/ves/")):
        response = getattr(api, method)(url, {}, format="json")
        assert response.status_code == 403, (method, url)
        assert "read-only" in response.json()["detail"]
    assert not Task.objects.exists()
    owner_ve.refresh_from_db()
    assert owner_ve.status == "running"


def test_an_expired_token_is_refused(owner, owner_ve):
    token, key = APIToken.issue(owner, "old", days=1)
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = token_client(key).get("/api/ves/101/")
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    _, fresh = APIToken.issue(owner, "new", days=1)
    assert token_client(fresh).get("/api/ves/101/").status_code == 200
