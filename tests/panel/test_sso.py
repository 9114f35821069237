"""Single sign-on against real servers: a throwaway slapd, and a django-oauth-toolkit OpenID Connect provider.

Both listen on free ports on 127.0.0.1, are started here and stopped by pid. The LDAP tests sign in through
the panel's own login page; the OIDC tests walk the real redirect flow: the panel's test client sends the
browser to the provider, a requests session logs in there and follows the redirects back to the panel's
callback, which fetches the tokens from the provider over HTTP.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from vzpanel.accounts.models import User
from vzpanel.sso import conf
from vzpanel.sso.models import SSOIdentity

from .conftest import REPO, stop_process, wait_for

SUFFIX = "dc=example,dc=org"
GROUPS = f"ou=groups,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "directory-root-pw"
LDAP_PW = "ldap-pass-4821"
LOCAL_PW = "local-pass-7730-horse"
REFUSED_NO_GROUP = "is in no group that has a role in this panel"
REFUSED_LOCAL = "was not created by"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install slapd ldap-utils)")
    return path


# --- slapd ---------------------------------------------------------------------------------------


def person(uid: str) -> str:
    return textwrap.dedent(f"""\
        dn: uid={uid},{PEOPLE}
        objectClass: inetOrgPerson
        uid: {uid}
        cn: {uid.capitalize()} Example
        givenName: {uid.capitalize()}
        sn: Example
        mail: {uid}@example.org
        userPassword: {LDAP_PW}
        """)


def group(cn: str, *uids: str) -> str:
    members = [f"uid={u},{PEOPLE}" for u in uids] or [ROOT_DN]  # groupOfNames needs a member
    lines = [f"dn: cn={cn},{GROUPS}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: {m}" for m in members]
    return "\n".join(lines) + "\n"


DIRECTORY = "\n".join([
    textwrap.dedent(f"""\
        dn: {SUFFIX}
        objectClass: dcObject
        objectClass: organization
        o: Example School
        dc: example

        dn: {PEOPLE}
        objectClass: organizationalUnit
        ou: people

        dn: {GROUPS}
        objectClass: organizationalUnit
        ou: groups
        """),
    person("alice"),  # a teacher
    person("bob"),  # an admin
    person("carol"),  # in no group
    person("erin"),  # also a local panel account
    group("admins", "bob", "erin"),
    group("teachers", "alice"),
    group("students"),
])


@pytest.fixture
def slapd(tmp_path):
    """A throwaway slapd with the directory above, on a free port; its URI."""
    slapd_bin, slapadd_bin = server_binary("slapd"), server_binary("slapadd")
    (tmp_path / "db").mkdir()
    config = tmp_path / "slapd.conf"
    config.write_text(textwrap.dedent(f"""\
        include /etc/ldap/schema/core.schema
        include /etc/ldap/schema/cosine.schema
        include /etc/ldap/schema/inetorgperson.schema
        include /etc/ldap/schema/nis.schema
        pidfile {tmp_path}/slapd.pid
        modulepath /usr/lib/ldap
        moduleload back_mdb
        database mdb
        suffix "{SUFFIX}"
        rootdn "{ROOT_DN}"
        rootpw {ROOT_PW}
        directory {tmp_path}/db
        maxsize 10485760
        """))
    (tmp_path / "data.ldif").write_text(DIRECTORY)
    subprocess.run([slapadd_bin, "-f", str(config), "-l", str(tmp_path / "data.ldif")], check=True,
                   capture_output=True)
    uri = f"ldap://127.0.0.1:{free_port()}/"
    log = open(tmp_path / "slapd.log", "wb")  # noqa: SIM115 - closed below
    # -d 0 keeps slapd in the foreground, so it stays our child and stop_process can end it by pid.
    proc = subprocess.Popen([slapd_bin, "-f", str(config), "-h", uri, "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        import ldap

        def up():
            assert proc.poll() is None, (tmp_path / "slapd.log").read_text()
            try:
                ldap.initialize(uri).simple_bind_s(ROOT_DN, ROOT_PW)
                return True
            except ldap.SERVER_DOWN:
                return False

        wait_for(up, 10, "slapd")
        yield uri
    finally:
        stop_process(proc)
        log.close()


def set_members(uri: str, cn: str, *uids: str) -> None:
    """Replace the members of a group in the directory, as its admin would."""
    import ldap

    conn = ldap.initialize(uri)
    conn.simple_bind_s(ROOT_DN, ROOT_PW)
    members = [f"uid={u},{PEOPLE}".encode() for u in uids] or [ROOT_DN.encode()]
    conn.modify_s(f"cn={cn},{GROUPS}", [(ldap.MOD_REPLACE, "member", members)])
    conn.unbind_s()


def apply_sso(settings, env: dict) -> None:
    """Configure the panel from environment variables, as settings.py does at start-up."""
    sso = conf.from_env(env)
    for name, value in sso.settings.items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, *sso.backends]


@pytest.fixture
def ldap_panel(settings, slapd, tmp_path):
    bind_pw = tmp_path / "bind-password"
    bind_pw.write_text(ROOT_PW + "\n")
    apply_sso(settings, {
        "VZPANEL_LDAP_URI": slapd,
        "VZPANEL_LDAP_BIND_DN": ROOT_DN,
        "VZPANEL_LDAP_BIND_PASSWORD_FILE": str(bind_pw),
        "VZPANEL_LDAP_USER_SEARCH": PEOPLE,
        "VZPANEL_LDAP_GROUP_ROLES": f"cn=admins,{GROUPS}=admin; cn=teachers,{GROUPS}=teacher; cn=students,{GROUPS}=student",
    })
    return slapd


def log_in(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def signed_in_as(client) -> str | None:
    from django.contrib.auth import get_user

    user = get_user(client)
    return user.username if user.is_authenticated else None


def messages_on_login_page(client, response=None) -> str:
    if response is None or response.status_code == 302:
        response = client.get("/login/")
    return response.content.decode()


@pytest.mark.django_db
class TestLDAP:
    def test_it_makes_a_directory_teacher_a_teacher(self, client, ldap_panel):
        response = log_in(client, "alice", LDAP_PW)
        assert response.status_code == 302, messages_on_login_page(client, response)
        assert signed_in_as(client) == "alice"
        alice = User.objects.get(username="alice")
        assert (alice.role, alice.is_staff, alice.is_superuser) == ("teacher", False, False)
        assert (alice.first_name, alice.email) == ("Alice", "alice@example.org")
        assert not alice.has_usable_password()
        assert (alice.sso_identity.source, alice.sso_identity.subject) == ("ldap", "alice")

    def test_it_makes_a_directory_admin_an_admin(self, client, ldap_panel):
        response = log_in(client, "bob", LDAP_PW)
        assert response.status_code == 302
        assert response["Location"] == reverse("login-enrol")  # admins must set up two factors, SSO or not
        bob = User.objects.get(username="bob")
        assert (bob.role, bob.is_panel_admin, bob.is_superuser) == ("admin", True, False)

    def test_it_refuses_a_user_in_no_mapped_group(self, client, ldap_panel):
        response = log_in(client, "carol", LDAP_PW)
        assert response.status_code == 200
        assert REFUSED_NO_GROUP in response.content.decode()
        assert signed_in_as(client) is None
        assert not User.objects.filter(username="carol").exists()

    def test_it_refuses_a_wrong_password(self, client, ldap_panel):
        response = log_in(client, "alice", "not-" + LDAP_PW)
        assert response.status_code == 200
        assert REFUSED_NO_GROUP not in response.content.decode()
        assert signed_in_as(client) is None
        assert not User.objects.filter(username="alice").exists()

    def test_it_reapplies_the_groups_at_each_sign_in(self, client, ldap_panel):
        assert log_in(client, "alice", LDAP_PW).status_code == 302
        assert User.objects.get(username="alice").role == "teacher"
        client.logout()

        set_members(ldap_panel, "teachers")
        set_members(ldap_panel, "students", "alice")
        assert log_in(client, "alice", LDAP_PW).status_code == 302
        assert User.objects.get(username="alice").role == "student"
        client.logout()

        # An admin taken out of the admins group loses admin at once, and cannot sign in with no group left.
        assert log_in(client, "bob", LDAP_PW).status_code == 302
        client.logout()
        set_members(ldap_panel, "admins", "erin")
        response = log_in(client, "bob", LDAP_PW)
        assert REFUSED_NO_GROUP in response.content.decode()
        assert signed_in_as(client) is None
        bob = User.objects.get(username="bob")
        assert (bob.role, bob.is_staff, bob.is_panel_admin) == ("student", False, False)

    def test_it_does_not_take_over_a_local_account(self, client, ldap_panel):
        erin = User.objects.create_user("erin", password=LOCAL_PW, role="customer")
        response = log_in(client, "erin", LDAP_PW)  # erin is in the directory's admins group
        assert REFUSED_LOCAL in response.content.decode()
        assert signed_in_as(client) is None
        erin.refresh_from_db()
        assert (erin.role, erin.is_staff) == ("customer", False)
        assert not SSOIdentity.objects.filter(user=erin).exists()
        assert log_in(client, "erin", LOCAL_PW).status_code == 302  # the local password still works

    def test_it_gives_the_default_role_when_configured(self, client, settings, ldap_panel):
        settings.SSO_LDAP = {**settings.SSO_LDAP, "default_role": "student"}
        assert log_in(client, "carol", LDAP_PW).status_code == 302
        assert User.objects.get(username="carol").role == "student"


# --- OpenID Connect --------------------------------------------------------------------------------

PROVIDER = Path(__file__).with_name("oidc_provider.py")
CLIENT_ID, CLIENT_SECRET = "vzpanel-test", "client-secret-5520-for-tests"
OIDC_PW = "oidc-pass-9134"


class Provider:
    def __init__(self, state: Path, port: int):
        self.state, self.port = state, port
        self.issuer = f"http://127.0.0.1:{port}/o"

    def run(self, *args: str) -> None:
        subprocess.run([sys.executable, str(PROVIDER), str(self.state), *args], check=True, cwd=REPO,
                       capture_output=True, timeout=60)

    def user(self, name: str, *groups: str) -> None:
        self.run("user", name, OIDC_PW, *groups)


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """django-oauth-toolkit as an OpenID Connect provider on a free port, with its own SQLite database."""
    import requests

    state = tmp_path_factory.mktemp("oidc-provider")
    op = Provider(state, free_port())
    op.run("migrate")
    op.run("client", CLIENT_ID, CLIENT_SECRET, "http://testserver/sso/oidc/callback/")
    log = open(state / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(PROVIDER), str(state), "serve", str(op.port)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, (state / "server.log").read_text()
            try:
                return requests.get(op.issuer + "/.well-known/openid-configuration", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(up, 30, "the OpenID Connect provider")
        yield op
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def oidc_panel(settings, provider):
    apply_sso(settings, {
        "VZPANEL_OIDC_ISSUER": provider.issuer,
        "VZPANEL_OIDC_CLIENT_ID": CLIENT_ID,
        "VZPANEL_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "VZPANEL_OIDC_NAME": "School ID",
        "VZPANEL_OIDC_CLAIM_ROLES": "vz-admins=admin;vz-teachers=teacher;vz-students=student",
    })
    return provider


def oidc_sign_in(client, username: str, password: str = OIDC_PW):
    """Press "Sign in with", log in at the provider, follow the redirects back; the panel's last response."""
    import requests

    response = client.get("/sso/oidc/login/?next=/ves/")
    assert response.status_code == 302, response.content
    url = response["Location"]
    browser = requests.Session()
    for _ in range(10):
        if url.startswith("http://testserver/"):
            break
        assert url.startswith("http://127.0.0.1:"), url
        reply = browser.get(url, allow_redirects=False, timeout=10)
        if reply.status_code == 200 and 'name="password"' in reply.text:
            reply = browser.post(reply.url, allow_redirects=False, timeout=10, data={
                "csrfmiddlewaretoken": browser.cookies["csrftoken"], "username": username, "password": password,
            })
        assert reply.status_code == 302, (reply.status_code, reply.text[:500])
        url = urljoin(reply.url, reply.headers["Location"])
    else:
        raise AssertionError("the provider never sent the browser back")
    parts = urlsplit(url)
    assert parts.path == "/sso/oidc/callback/" and "code=" in parts.query, url
    return client.get(f"{parts.path}?{parts.query}")


@pytest.mark.django_db
class TestOIDC:
    def test_it_shows_no_button_when_unconfigured(self, client):
        assert "Sign in with" not in client.get("/login/").content.decode()
        assert client.get("/sso/oidc/login/").status_code == 404

    def test_it_shows_the_button(self, client, oidc_panel):
        page = client.get("/login/?next=/ves/").content.decode()
        assert "Sign in with School ID" in page
        assert "/sso/oidc/login/?next=/ves/" in page

    def test_it_signs_in_a_teacher_through_the_provider(self, client, oidc_panel):
        oidc_panel.user("olivia", "vz-teachers")
        response = oidc_sign_in(client, "olivia")
        assert response.status_code == 302 and response["Location"] == "/ves/", messages_on_login_page(client)
        assert signed_in_as(client) == "olivia"
        olivia = User.objects.get(username="olivia")
        assert (olivia.role, olivia.is_staff, olivia.email) == ("teacher", False, "olivia@example.org")
        assert olivia.sso_identity.source == "oidc"
        assert olivia.sso_identity.subject.startswith(oidc_panel.issuer + " ")
        assert client.get("/ves/").status_code == 200

    def test_it_reapplies_the_role_claim_at_each_sign_in(self, client, oidc_panel):
        oidc_panel.user("oscar", "vz-admins")
        assert oidc_sign_in(client, "oscar").status_code == 302
        assert User.objects.get(username="oscar").role == "admin"
        client.logout()

        oidc_panel.user("oscar", "vz-students")
        assert oidc_sign_in(client, "oscar").status_code == 302
        oscar = User.objects.get(username="oscar")
        assert (oscar.role, oscar.is_staff) == ("student", False)
        client.logout()

        oidc_panel.user("oscar")  # in no group at all
        response = oidc_sign_in(client, "oscar")
        assert response["Location"] == "/login/"
        assert signed_in_as(client) is None
        assert REFUSED_NO_GROUP in messages_on_login_page(client)

    def test_it_does_not_take_over_a_local_account(self, client, oidc_panel):
        frank = User.objects.create_user("frank", password=LOCAL_PW, role="customer")
        oidc_panel.user("frank", "vz-admins")
        response = oidc_sign_in(client, "frank")
        assert response["Location"] == "/login/"
        assert signed_in_as(client) is None
        page = messages_on_login_page(client)
        assert REFUSED_LOCAL in page and "School ID" in page
        frank.refresh_from_db()
        assert (frank.role, frank.is_staff) == ("customer", False)
        assert not SSOIdentity.objects.filter(user=frank).exists()

    def test_it_says_so_when_the_provider_refuses_the_client(self, client, settings, oidc_panel):
        oidc_panel.user("olga", "vz-teachers")
        settings.OIDC_RP_CLIENT_SECRET = "not-the-secret"
        response = oidc_sign_in(client, "olga")
        assert response["Location"] == "/login/"
        assert signed_in_as(client) is None
        assert "Sign-in with School ID failed" in messages_on_login_page(client)
        assert not User.objects.filter(username="olga").exists()


# --- configuration -----------------------------------------------------------------------------------


def test_it_is_off_and_imports_nothing_when_unset():
    code = textwrap.dedent("""\
        import os, sys, django
        for k in list(os.environ):
            if k.startswith(("VZPANEL_LDAP", "VZPANEL_OIDC")):
                del os.environ[k]
        os.environ["DJANGO_SETTINGS_MODULE"] = "vzpanel.settings"
        django.setup()
        from django.conf import settings
        from django.template import Context, Template
        import vzpanel.urls
        page = Template("{% load sso %}{% sso_buttons %}").render(Context({"next": "/ves/"}))
        print(sorted(m for m in ("ldap", "django_auth_ldap", "mozilla_django_oidc") if m in sys.modules),
              settings.SSO_LDAP, settings.SSO_OIDC, repr(page.strip()), [b for b in settings.AUTHENTICATION_BACKENDS if "sso" in b])
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "VZPANEL_STATE": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] None None '' []"


@pytest.mark.parametrize(("env", "error"), [
    ({"VZPANEL_LDAP_URI": "http://x"}, "is not an ldap:// or ldaps:// address"),
    ({"VZPANEL_LDAP_URI": "ldap://x"}, "set VZPANEL_LDAP_USER_SEARCH or VZPANEL_LDAP_USER_DN_TEMPLATE"),
    ({"VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE}, "set VZPANEL_LDAP_GROUP_ROLES"),
    ({"VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE,
      "VZPANEL_LDAP_GROUP_ROLES": f"cn=a,{GROUPS}=boss"}, "unknown role 'boss'"),
    ({"VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE,
      "VZPANEL_LDAP_GROUP_ROLES": "admins=admin"}, "is not a distinguished name"),
    ({"VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE,
      "VZPANEL_LDAP_DEFAULT_ROLE": "admin"}, "admin cannot be a default role"),
    ({"VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE, "VZPANEL_LDAP_DEFAULT_ROLE": "student",
      "VZPANEL_LDAP_BIND_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read /nonexistent/pw"),
    ({"VZPANEL_OIDC_ISSUER": "http://id.example.org"}, "must use https"),
    ({"VZPANEL_OIDC_ISSUER": "https://id.example.org"}, "set VZPANEL_OIDC_CLIENT_ID"),
    ({"VZPANEL_OIDC_ISSUER": "https://id.example.org", "VZPANEL_OIDC_CLIENT_ID": "a",
      "VZPANEL_OIDC_CLIENT_SECRET": "b"}, "set VZPANEL_OIDC_CLAIM_ROLES"),
])
def test_it_refuses_bad_configuration_in_words(env, error):
    with pytest.raises(ImproperlyConfigured, match=error.replace("(", r"\(")) as exc:
        conf.from_env(env)
    assert "\n" not in str(exc.value)


def test_it_finds_the_group_search_base():
    sso = conf.from_env({
        "VZPANEL_LDAP_URI": "ldap://x", "VZPANEL_LDAP_USER_SEARCH": PEOPLE,
        "VZPANEL_LDAP_GROUP_ROLES": f"cn=a,ou=staff,{GROUPS}=admin;CN=b, OU=Groups,{SUFFIX}=teacher",
    })
    assert sso.settings["AUTH_LDAP_GROUP_SEARCH"].base_dn == GROUPS
    assert sso.settings["SSO_LDAP"]["group_roles"][1] == (f"cn=b,{GROUPS}", "teacher")
    assert sso.backends == [conf.LDAP_BACKEND]
