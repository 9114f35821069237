"""The API documentation is a page of the panel (/api/docs/, Swagger UI) whose scripts and styles come from
the panel itself, never from a CDN; it lists every path of the schema, and every operation is described."""

import re

import pytest

from tests.panel.conftest import PASSWORD


def schema(client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.django_db
def test_the_docs_are_for_signed_in_users(client):
    response = client.get("/api/docs/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.django_db
def test_the_docs_page_loads_its_assets_from_the_panel_and_is_in_the_menu(client_for, owner):
    from django.contrib.staticfiles import finders

    client = client_for(owner)
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "an external URL in the docs page"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not among the panel's static files"
    assert '"/api/schema/"' in html or "'/api/schema/'" in html or "/api/schema/" in html
    menu = client.get("/").content.decode()
    tokens = menu.index('href="/account/tokens/"')
    assert 'href="/api/docs/">API documentation</a>' in menu[tokens:tokens + 300]


@pytest.mark.django_db
def test_every_operation_of_the_schema_is_described(client_for, admin):
    undescribed = [f"{method.upper()} {path}" for path, ops in schema(client_for(admin))["paths"].items()
                   for method, op in ops.items()
                   if method in ("get", "post", "put", "patch", "delete") and not (op.get("description") or "").strip()]
    assert not undescribed, f"operations without a description: {undescribed}"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_docs_list_every_path_without_leaving_the_panel(live_panel, browser, admin, client_for):
    paths = sorted(schema(client_for(admin))["paths"])
    assert len(paths) > 20
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{live_panel}/login/")
    page.get_by_label("Username").fill(admin.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ves/$|/$"))
    page.goto(f"{live_panel}/api/docs/")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    shown = set(page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)"))
    assert set(paths) <= shown, f"not listed: {sorted(set(paths) - shown)}"
    outside = [u for u in requested if not u.startswith(live_panel) and not u.startswith(("data:", "blob:"))]
    assert not outside, f"the docs page fetched from elsewhere: {outside}"
