"""Error pages (404, 403, 400, 500, an expired form) in the panel's look, each with a way back to the start page;
the 500 page needs neither the database nor the context processors (either may be what failed)."""

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client, RequestFactory
from django.views import defaults

pytestmark = pytest.mark.django_db

HOME = 'href="/" id="error-home"'


def assert_panel_error_page(response, status: int, words: str):
    html = response.content.decode()
    assert response.status_code == status
    assert HOME in html, html[:500]
    assert words in html
    assert "vendor/bootstrap/bootstrap.min.css" in html and "vzpanel/theme.js" in html  # the panel's look, dark mode
    assert 'id="main"' in html and "Skip to main content" in html


def test_a_missing_page_says_so_in_the_panels_look_with_a_link_home(client_for, owner, outsider, owner_ve):
    response = client_for(outsider).get(f"/ves/{owner_ve.ctid}/")  # someone else's VE: 404, as for none
    assert_panel_error_page(response, 404, "Not found")
    assert outsider.username in response.content.decode()  # the usual menu: the user is still signed in
    assert_panel_error_page(Client().get("/no/such/page/"), 404, "Not found")


def test_a_refusal_and_an_expired_form_have_a_way_back(owner):
    request = RequestFactory().get("/somewhere/")
    request.user = owner
    request.session = {}
    response = defaults.permission_denied(request, PermissionDenied())
    assert_panel_error_page(response, 403, "Not allowed")

    response = Client(enforce_csrf_checks=True).post("/login/", {"username": "x", "password": "y"})
    assert_panel_error_page(response, 403, "This form has expired")


def test_a_bad_request_has_a_way_back(settings):
    settings.ALLOWED_HOSTS = ["panel.example"]
    response = Client().get("/login/", HTTP_HOST="attacker.example")  # DisallowedHost: 400
    assert_panel_error_page(response, 400, "Bad request")


def test_the_server_error_page_renders_without_the_database_or_a_user(django_assert_num_queries):
    request = RequestFactory().get("/ves/")  # no user, no session: the middleware may be what failed
    with django_assert_num_queries(0):
        response = defaults.server_error(request)
    assert_panel_error_page(response, 500, "Something went wrong on our side")

