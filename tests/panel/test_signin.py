"""Sign-in as hosts and schools expect: lockout against guessing at every door (the panel's login, the Django
admin's, API tokens) that an attacker cannot turn against the victim; client addresses from trusted proxies
only; two-factor sign-in in a real browser; HTTPS settings, host names and the self-signed certificate.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import ssl
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.panel.conftest import PASSWORD, REPO, free_port, panel_env, stop_process, wait_for
from vzpanel.accounts import twofactor
from vzpanel.audit.models import AuditEntry
from vzpanel.core import clientip, tls

ATTACKER = "198.51.100.66"
VICTIM = "192.0.2.10"


def post_login(client, path, username, password, ip):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=ip)


def totp_code(secret: str, drift: int = 0) -> str:
    """Compute the authenticator app's current code from the secret the page shows."""
    raw = secret.replace(" ", "")
    key = base64.b32decode(raw + "=" * (-len(raw) % 8))
    return f"{TOTP(key, drift=drift).token():06d}"


def give_authenticator(user) -> str:
    """Set up an authenticator for user, as the enrolment page does; return its secret."""
    device = twofactor.unconfirmed_device(user)
    assert twofactor.confirm(user, device, totp_code(twofactor.secret_of(device))) is not None
    return twofactor.secret_of(device)


def failures(ip):
    return AuditEntry.objects.filter(action="login.failed", ip=ip).count()


# --- brute force ------------------------------------------------------------------------------------


@pytest.mark.parametrize("door", ["/login/", "/django-admin/login/"])
def test_guessing_an_admins_password_locks_the_guesser_out_not_the_admin(door, admin, settings):
    secret = give_authenticator(admin)
    attacker = Client()
    answers = [post_login(attacker, door, admin.username, f"guess-{n}", ATTACKER).status_code
               for n in range(settings.AXES_FAILURE_LIMIT)]
    assert answers == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    # Locked: even the right password is not checked from the attacker's address.
    response = post_login(attacker, door, admin.username, PASSWORD, ATTACKER)
    assert response.status_code == 429 and int(response["Retry-After"]) > 60
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert twofactor.PENDING_KEY not in attacker.session and "_auth_user_id" not in attacker.session
    assert failures(ATTACKER) == settings.AXES_FAILURE_LIMIT
    assert AuditEntry.objects.filter(action="login.blocked", ip=ATTACKER, username=admin.username).count() == 1

    # The admin, from their own address, signs in all the way: password, then the code.
    victim = Client()
    response = post_login(victim, door, admin.username, PASSWORD, VICTIM)
    assert response.status_code == 302 and response.url == "/login/code/"
    response = victim.post("/login/code/", {"code": totp_code(secret, drift=1)}, REMOTE_ADDR=VICTIM)
    assert response.status_code == 302
    assert response.url == ("/django-admin/" if "admin" in door else "/")
    assert victim.get("/django-admin/", REMOTE_ADDR=VICTIM).status_code == 200
    entry = AuditEntry.objects.get(action="login", user=admin)
    assert entry.ip == VICTIM and "authenticator app" in entry.detail


def test_guessing_the_second_factor_locks_too(admin, settings):
    give_authenticator(admin)
    client = Client()
    assert post_login(client, "/login/", admin.username, PASSWORD, ATTACKER).url == "/login/code/"
    codes = []
    for n in range(settings.AXES_FAILURE_LIMIT):
        # django-otp's own throttle refuses fast retries; wind it back so each guess is checked
        TOTPDevice.objects.filter(user=admin).update(throttling_failure_timestamp=None)
        codes.append(client.post("/login/code/", {"code": f"{n:06d}"}, REMOTE_ADDR=ATTACKER).status_code)
    assert codes == [400] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    assert client.post("/login/code/", {"code": "000000"}, REMOTE_ADDR=ATTACKER).status_code == 429
    assert "_auth_user_id" not in client.session
    assert AuditEntry.objects.filter(action="login.failed", username=admin.username, ip=ATTACKER).count() == 5


def test_bad_api_tokens_lock_the_address_with_retry_after(owner, api_for, settings):
    good = api_for(owner)
    key = good._credentials["HTTP_AUTHORIZATION"]
    limit = settings.VZPANEL_LOGIN_FAILURES_PER_IP
    bad = Client(HTTP_AUTHORIZATION="Token vzp_not-a-real-key")
    answers = [bad.get("/api/ves/", REMOTE_ADDR=ATTACKER).status_code for _ in range(limit)]
    assert answers == [401] * (limit - 1) + [429]
    response = Client(HTTP_AUTHORIZATION=key).get("/api/ves/", REMOTE_ADDR=ATTACKER)
    assert response.status_code == 429 and int(response["Retry-After"]) > 60
    assert "Too many failed" in response.json()["detail"]
    assert Client(HTTP_AUTHORIZATION=key).get("/api/ves/", REMOTE_ADDR=VICTIM).status_code == 200
    assert failures(ATTACKER) == limit
    assert AuditEntry.objects.filter(action="login.failed", ip=ATTACKER, detail="API token").exists()


def test_an_address_guessing_many_names_is_locked_for_all_of_them(owner, settings):
    settings.VZPANEL_LOGIN_FAILURES_PER_IP = limit = 12  # each unknown name costs a password hash: keep it short
    for n in range(limit):
        post_login(Client(), "/login/", f"name{n}", "guess", ATTACKER)
    assert post_login(Client(), "/login/", owner.username, PASSWORD, ATTACKER).status_code == 429
    assert post_login(Client(), "/login/", owner.username, PASSWORD, VICTIM).status_code == 302


# --- client addresses -------------------------------------------------------------------------------


def test_a_forged_x_forwarded_for_is_ignored_and_does_not_dodge_the_lock(owner, settings):
    settings.VZPANEL_TRUSTED_PROXIES = []
    for n in range(settings.AXES_FAILURE_LIMIT):
        response = Client().post("/login/", {"username": owner.username, "password": "x"}, REMOTE_ADDR=ATTACKER,
                                 HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
    assert response.status_code == 429  # a new forged address each time changed nothing
    assert failures(ATTACKER) == settings.AXES_FAILURE_LIMIT
    assert not AuditEntry.objects.filter(ip__startswith="203.0.113.").exists()


def test_x_forwarded_for_from_a_configured_proxy_names_the_client(owner, settings):
    proxy = "10.20.0.5"
    settings.VZPANEL_TRUSTED_PROXIES = ["10.20.0.0/24"]
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = Client().post("/login/", {"username": owner.username, "password": "x"}, REMOTE_ADDR=proxy,
                                 HTTP_X_FORWARDED_FOR=f"203.0.113.7, {ATTACKER}")
    assert response.status_code == 429
    # The proxy's right-most untrusted hop is the client; what the client wrote left of it is not believed.
    assert failures(ATTACKER) == settings.AXES_FAILURE_LIMIT and failures(proxy) == 0
    # Another client behind the same proxy is not locked out.
    response = Client().post("/login/", {"username": owner.username, "password": PASSWORD}, REMOTE_ADDR=proxy,
                             HTTP_X_FORWARDED_FOR=VICTIM)
    assert response.status_code == 302
    assert AuditEntry.objects.get(action="login").ip == VICTIM


def test_the_address_rule():
    proxies = clientip.parse_networks("10.0.0.0/8, ::1")
    assert clientip.resolve("192.0.2.1", "6.6.6.6", proxies) == "192.0.2.1"
    assert clientip.resolve("10.0.0.1", "6.6.6.6, 192.0.2.1", proxies) == "192.0.2.1"
    assert clientip.resolve("10.0.0.1", "192.0.2.1, 10.0.0.9", proxies) == "192.0.2.1"
    assert clientip.resolve("::1", "garbage, 192.0.2.1", proxies) == "192.0.2.1"
    assert clientip.resolve("10.0.0.1", "not-an-address", proxies) == "10.0.0.1"
    assert clientip.resolve("::ffff:10.0.0.1", "192.0.2.8", proxies) == "192.0.2.8"
    with pytest.raises(Exception, match="not an IP address or network"):
        clientip.parse_networks("10.0.0.0/8, proxy.example")


# --- host names -------------------------------------------------------------------------------------


def test_the_default_allowed_hosts_refuse_a_foreign_host(settings, db):
    from vzpanel.settings import _default_hosts

    defaults = _default_hosts()
    assert "*" not in defaults and "localhost" in defaults
    settings.ALLOWED_HOSTS = defaults
    assert Client().get("/login/", HTTP_HOST="evil.example").status_code == 400
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", f"{os.uname().nodename}:8000"):
        assert Client().get("/login/", HTTP_HOST=host).status_code == 200, host


# --- TLS ----------------------------------------------------------------------------------------------


def test_ensure_certificate_makes_one_that_openssl_verifies_and_keeps_it(tmp_path):
    names = ["panel.example.test", "localhost", "127.0.0.1", "::1"]
    group = "daemon" if os.geteuid() == 0 else None
    cert, key = tls.ensure_certificate(tmp_path / "tls", names, group=group)
    for name in names:
        flag = "-verify_ip" if name[0].isdigit() or ":" in name else "-verify_hostname"
        run = subprocess.run(["openssl", "verify", "-CAfile", cert, flag, name, cert], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    wrong = subprocess.run(["openssl", "verify", "-CAfile", cert, "-verify_hostname", "evil.example", cert],
                           capture_output=True, text=True)
    assert wrong.returncode != 0
    st = key.stat()
    assert oct(st.st_mode & 0o777) == ("0o640" if group else "0o600") and st.st_uid == os.geteuid()
    if group:
        import grp

        assert st.st_gid == grp.getgrnam(group).gr_gid
    before = (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_ino)
    assert tls.ensure_certificate(tmp_path / "tls", ["other.example"], group=group) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_ino) == before
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["cert.pem", "key.pem"]
    with pytest.raises(tls.TLSError, match="neither a host name"):
        tls.ensure_certificate(tmp_path / "bad", ["bad name;rm"])


@contextlib.contextmanager
def daphne(redis_url, panel_state, test_db_path, endpoints, **env):
    """Run the panel's ASGI server with endpoints (daphne -e ...) and extra environment; stop it after."""
    log = open(panel_state / "web-signin.log", "ab")  # noqa: SIM115
    args = [sys.executable, "-m", "daphne"]
    for endpoint in endpoints:
        args += ["-e", endpoint]
    env = {"VZPANEL_ALLOWED_HOSTS": "", **env}  # the default host names, whatever the test run set
    proc = subprocess.Popen([*args, "vzpanel.asgi:application"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=panel_env(redis_url, panel_state, test_db_path, **env))
    try:
        yield proc
    finally:
        stop_process(proc)
        log.close()


def wait_listening(proc, port):
    import socket

    def up():
        assert proc.poll() is None, "daphne exited; see web-signin.log"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            return False

    wait_for(up, 30, f"daphne on port {port}")


def set_cookies(response) -> dict:
    cookies = {}
    for header in response.headers.get_all("Set-Cookie") or []:
        cookie = SimpleCookie(header)
        for name, morsel in cookie.items():
            cookies[name] = (morsel.value, bool(morsel["secure"]), header)
    return cookies


@pytest.mark.django_db(transaction=True)
def test_with_tls_the_server_redirects_http_sends_hsts_and_secure_cookies(
    redis_url, panel_state, test_db_path, owner, tmp_path
):
    cert, key = tls.ensure_certificate(tmp_path / "tls", ["localhost", "127.0.0.1"])
    https_port, http_port = free_port(), free_port()
    endpoints = [tls.daphne_endpoint("127.0.0.1", https_port, cert, key), f"tcp:port={http_port}:interface=127.0.0.1"]
    with daphne(redis_url, panel_state, test_db_path, endpoints, VZPANEL_TLS="1",
                VZPANEL_SSL_HOST=f"127.0.0.1:{https_port}") as proc:
        wait_listening(proc, https_port)
        wait_listening(proc, http_port)
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        plain.request("GET", "/login/?next=/ves/")
        response = plain.getresponse()
        assert response.status == 301
        assert response.headers["Location"] == f"https://127.0.0.1:{https_port}/login/?next=/ves/"

        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.request("GET", "/login/")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        csrf, secure, header = set_cookies(response)["csrftoken"]
        assert secure, header
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
        conn.request("POST", "/login/", body=urlencode({"username": owner.username, "password": PASSWORD,
                                                         "csrfmiddlewaretoken": token}),
                     headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}",
                              "Origin": f"https://127.0.0.1:{https_port}", "X-Forwarded-For": "203.0.113.50"})
        response = conn.getresponse()
        response.read()
        assert response.status == 302, response.status
        _, secure, header = set_cookies(response)["sessionid"]
        assert secure and "HttpOnly" in header, header
    # daphne no longer believes X-Forwarded-For from anyone: the audit has the real peer.
    assert AuditEntry.objects.get(action="login", user=owner).ip == "127.0.0.1"


@pytest.mark.django_db(transaction=True)
def test_the_live_server_refuses_a_foreign_host(redis_url, panel_state, test_db_path):
    port = free_port()
    with daphne(redis_url, panel_state, test_db_path, [f"tcp:port={port}:interface=127.0.0.1"]) as proc:
        wait_listening(proc, port)
        for host, expected in (("evil.example", 400), ("localhost", 200), (f"127.0.0.1:{port}", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/login/", headers={"Host": host})
            assert conn.getresponse().status == expected, host


def test_websocket_handshakes_follow_the_allowed_hosts_setting(settings):
    from asgiref.sync import async_to_sync
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.testing import WebsocketCommunicator

    from vzpanel.core.hosts import AllowedHostsOriginValidator

    app = AllowedHostsOriginValidator(AsyncWebsocketConsumer.as_asgi())

    def connects(origin):
        async def run():
            communicator = WebsocketCommunicator(app, "/ws/", headers=[(b"origin", origin), (b"host", b"x")])
            connected, _ = await communicator.connect(timeout=5)
            await communicator.disconnect()
            return connected

        return async_to_sync(run)()

    settings.ALLOWED_HOSTS = ["panel.example"]
    assert connects(b"http://panel.example") and not connects(b"http://rebound.evil.example")
    settings.ALLOWED_HOSTS = ["rebound.evil.example"]
    assert connects(b"http://rebound.evil.example")


# --- two factors in a real browser -----------------------------------------------------------------


@pytest.fixture
def panel_2fa(redis_url, panel_state, test_db_path, transactional_db):
    """The panel's real ASGI server, with two factors required of admins (the default), on a free port."""
    port = free_port()
    with daphne(redis_url, panel_state, test_db_path, [f"tcp:port={port}:interface=127.0.0.1"],
                VZPANEL_2FA_REQUIRED_ROLES="admin") as proc:
        wait_listening(proc, port)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def browser_page(browser):
    return browser.new_page()


def password_step(page, base, user):
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def log_out(page):
    page.locator('form[action="/logout/"]').evaluate("form => form.submit()")
    page.wait_for_url(re.compile(r"/login/$"))


@pytest.mark.browser
def test_a_customer_enrols_then_signs_in_with_a_code_and_once_with_a_recovery_code(panel_2fa, browser_page, owner):
    from playwright.sync_api import expect

    page, base = browser_page, panel_2fa
    password_step(page, base, owner)
    expect(page).to_have_url(re.compile(r"/$"))  # optional for customers: not set up, not asked

    page.goto(f"{base}/account/")
    page.get_by_role("link", name="Set up two-factor sign-in").click()
    expect(page.locator("#totp-qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text()
    page.get_by_label("Code from the app").fill("123456" if totp_code(secret) != "123456" else "654321")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_contain_text("That code is not right")
    time.sleep(1.1)  # django-otp throttles the next try for a second
    page.get_by_label("Code from the app").fill(totp_code(secret))
    page.get_by_role("button", name="Confirm").click()
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}", c) for c in codes)
    page.get_by_role("link", name="I have saved them, continue").click()
    expect(page.locator("#two-factor")).to_contain_text("On")

    log_out(page)
    password_step(page, base, owner)
    expect(page).to_have_url(re.compile(r"/login/code/$"))
    page.goto(f"{base}/ves/")  # the password alone signed nobody in
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.goto(f"{base}/login/code/")
    page.get_by_label("Code").fill(totp_code(secret, drift=1))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    log_out(page)
    password_step(page, base, owner)
    page.get_by_label("Code").fill(codes[0].upper())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#messages")).to_contain_text("recovery code; 9 left")

    log_out(page)
    password_step(page, base, owner)
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("That code is not right")
    expect(page).to_have_url(re.compile(r"/login/code/$"))
    page.goto(f"{base}/ves/")
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    logins = AuditEntry.objects.filter(action="login", user=owner).order_by("id")
    assert [e.detail for e in logins] == ["password", "password and authenticator app", "password and recovery code"]
    assert AuditEntry.objects.filter(action="login.failed", username=owner.username, detail="recovery code").count() == 1


@pytest.mark.browser
def test_an_admin_without_two_factors_must_enrol_before_anything_else(panel_2fa, browser_page, admin):
    from playwright.sync_api import expect

    page, base = browser_page, panel_2fa
    password_step(page, base, admin)
    expect(page).to_have_url(re.compile(r"/login/enrol/$"))
    expect(page.get_by_role("status")).to_contain_text("must sign in with two factors")
    for path in ("/ves/", "/account/users/", "/django-admin/", "/api/ves/"):
        response = page.goto(f"{base}{path}")
        assert "/login/" in page.url or response.status in (401, 403), path
    assert page.request.get(f"{base}/api/ves/").status in (401, 403)

    page.goto(f"{base}/login/enrol/")
    secret = page.locator("#totp-secret").inner_text()
    page.get_by_label("Code from the app").fill(totp_code(secret))
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    page.get_by_role("link", name="I have saved them, continue").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("link", name="Users")).to_be_visible()
    assert twofactor.has_device(admin)
    assert AuditEntry.objects.filter(action="2fa.enable", user=admin).exists()
