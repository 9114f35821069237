"""Accounts: login and its lockout (django-axes), admins managing users and plans, API tokens."""

from django.test import Client

from tests.panel.conftest import PASSWORD
from vzpanel.accounts.models import APIToken, User
from vzpanel.audit.models import AuditEntry
from vzpanel.plans.models import Plan


def login(client, username, password, ip="10.9.8.7"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_it_logs_in_and_audits_it(owner):
    client = Client()
    assert login(client, owner.username, PASSWORD).status_code == 302
    entry = AuditEntry.objects.get(action="login")
    assert (entry.user, entry.ip) == (owner, "10.9.8.7")


def test_it_locks_a_user_name_at_one_address_only_even_with_the_right_password(owner):
    client = Client()
    for _ in range(4):
        assert login(client, owner.username, "wrong").status_code == 200
    response = login(client, owner.username, "wrong")  # the 5th failure locks (user, address)
    assert response.status_code == 429 and "Too many failed sign-in attempts" in response.content.decode()
    response = login(client, owner.username, PASSWORD)
    assert response.status_code == 429 and int(response["Retry-After"]) > 14 * 60
    assert "_auth_user_id" not in client.session
    assert AuditEntry.objects.filter(action="login.failed", ip="10.9.8.7").count() == 5
    assert AuditEntry.objects.filter(action="login.blocked", result="denied").count() == 1
    # The owner, elsewhere, is not locked out by whoever guessed at 10.9.8.7.
    assert login(Client(), owner.username, PASSWORD, ip="10.2.2.2").status_code == 302


def test_it_blocks_an_address_that_tries_many_user_names(owner, settings):
    settings.VZPANEL_LOGIN_FAILURES_PER_IP = 10
    for n in range(settings.VZPANEL_LOGIN_FAILURES_PER_IP - 1):
        assert login(Client(), f"guess{n}", "wrong", ip="10.1.1.1").status_code == 200
    assert login(Client(), "guess-last", "wrong", ip="10.1.1.1").status_code == 429
    assert login(Client(), owner.username, PASSWORD, ip="10.1.1.1").status_code == 429
    assert login(Client(), owner.username, PASSWORD, ip="10.2.2.2").status_code == 302


def test_login_needs_csrf(owner):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/login/", {"username": owner.username, "password": PASSWORD}).status_code == 403


def test_an_admin_creates_a_plan_and_a_student_of_a_teacher(client_for, admin, teacher):
    client = client_for(admin)
    response = client.post("/plans/new/", {"name": "class", "description": "", "ram_mb": 128, "swap_mb": 0,
                                           "cpus": 1, "disk_gb": 1, "nproc": 64, "max_ves": 1})
    assert response.status_code == 302
    plan = Plan.objects.get(name="class")
    response = client.post("/account/users/new/", {
        "username": "stu", "email": "", "first_name": "", "last_name": "", "role": "student",
        "plan": plan.pk, "teacher": teacher.pk, "password1": "Another-pass-42", "password2": "Another-pass-42"})
    assert response.status_code == 302, response.content
    stu = User.objects.get(username="stu")
    assert (stu.role, stu.plan, stu.teacher) == ("student", plan, teacher)
    assert AuditEntry.objects.filter(action__in=["plan.create", "user.create"], user=admin).count() == 2


def test_an_admin_chooses_what_the_console_of_a_plans_ves_opens(client_for, admin):
    client = client_for(admin)
    fields = {"name": "exam", "description": "", "ram_mb": 128, "swap_mb": 0, "cpus": 1, "disk_gb": 1, "nproc": 64,
              "max_ves": 1}
    assert client.post("/plans/new/", {**fields, "console_mode": "login"}).status_code == 302
    assert Plan.objects.get(name="exam").console_mode == "login"
    response = client.post("/plans/new/", {**fields, "name": "bad", "console_mode": "telnet"})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert "login prompt" in client.get("/plans/").content.decode()


def test_it_explains_bad_plan_and_user_input(client_for, admin, owner, teacher):
    client = client_for(admin)
    response = client.post("/plans/new/", {"name": "", "ram_mb": -1, "cpus": 0, "disk_gb": 1, "nproc": 64,
                                           "max_ves": 1, "swap_mb": 0})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    response = client.post(f"/account/users/{owner.pk}/", {"role": "customer", "teacher": teacher.pk,
                                                           "is_active": "on"})
    assert response.status_code == 400
    assert "Only students have a teacher." in response.content.decode()
    assert not Plan.objects.filter(name="").exists()


def test_a_user_creates_and_revokes_api_tokens(client_for, owner):
    client = client_for(owner)
    response = client.post("/account/tokens/", {"name": "deploy"})
    key = response.context["new_key"]
    assert key.startswith("vzp_")
    token = APIToken.objects.get(user=owner)
    assert token.key_hash != key and key not in token.key_hash  # only the hash is stored
    api = Client(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/ves/").status_code == 200
    client.post(f"/account/tokens/{token.pk}/revoke/")
    assert api.get("/api/ves/").status_code == 401


def test_a_user_cannot_revoke_another_users_token(client_for, owner, outsider):
    token, _ = APIToken.issue(owner, "mine")
    assert client_for(outsider).post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert APIToken.objects.filter(pk=token.pk).exists()
