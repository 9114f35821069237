"""Resellers: a reseller makes customers and plans within the quota an admin gave it, and sees only its own.

Personas: an admin; two resellers (Rita and Rob), each with a quota, a plan of its own and a customer with a VE
(and a task on it); an admins' customer with a VE. Each reseller tries the other's objects by id directly, in
pages and the API, and gets a 404 with nothing changed; the quota refuses in words (which quota, used, asked)
and changes nothing. The live test makes a real VE for Rita's customer through the node agent and checks the
engine's limits when a plan change is refused and when one fits.
"""

import pytest

from tests.panel.conftest import PASSWORD, make_user, make_ve, wait_task
from tests.panel.test_permissions import API_CALLS, PAGE_GETS, PAGE_POSTS
from vzpanel.accounts.models import User
from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.models import IPAddress
from vzpanel.plans.models import Plan
from vzpanel.resellers.models import ResellerQuota
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

RITA_VE, ROB_VE, ADMINS_VE = 301, 401, 101
NEW_VE = {"ostemplate": "tiny", "hostname": "web1", "root_password": "", "start": "on"}


def make_reseller(name, **quota):
    reseller = make_user(name, User.Role.RESELLER)
    values = {"max_ves": 3, "ram_mb": 1024, "disk_gb": 10, "ipv4_addresses": 3, "ipv6_addresses": 0, **quota}
    ResellerQuota.objects.create(reseller=reseller, **values)
    return reseller


def make_plan(name, owner, **values):
    values = {"ram_mb": 256, "swap_mb": 0, "cpus": 1, "disk_gb": 2, "nproc": 128, "max_ves": 3, **values}
    return Plan.objects.create(name=name, owner=owner, **values)


def make_customer(name, reseller, plan):
    customer = make_user(name, "customer", plan=plan)
    customer.reseller = reseller
    customer.save()
    return customer


@pytest.fixture
def world(db, node, admin, owner):
    """Rita and Rob, each with a plan, a customer, a VE of it and a task on it; the admins' customer's VE."""
    rita, rob = make_reseller("rita-reseller"), make_reseller("rob-reseller")
    rita_plan, rob_plan = make_plan("rita-basic", rita), make_plan("rob-basic", rob)
    carl, cora = make_customer("carl-of-rita", rita, rita_plan), make_customer("cora-of-rob", rob, rob_plan)
    ves = {}
    for who, ctid in ((carl, RITA_VE), (cora, ROB_VE), (owner, ADMINS_VE)):
        ve = make_ve(who, node, ctid)
        ve.limits = who.plan.limits()
        ve.save()
        ves[ctid] = ve
        Task.objects.create(ve=ve, node=node, action="start", user=who, status="completed")
    return {"rita": rita, "rob": rob, "rita_plan": rita_plan, "rob_plan": rob_plan, "carl": carl, "cora": cora,
            "ves": ves, "owner": owner, "admin": admin}


def snapshot_of_rows() -> dict:
    """What a refused request must leave alone: users, plans, quotas, VEs, tasks (as comparable values)."""
    return {
        "users": sorted(User.objects.values_list("username", "role", "plan_id", "reseller_id", "is_active",
                                                 "is_staff", "is_superuser", "email")),
        "plans": sorted(Plan.objects.values_list("name", "owner_id", "ram_mb", "disk_gb", "max_ves")),
        "quotas": sorted(ResellerQuota.objects.values_list("reseller_id", "max_ves", "ram_mb", "disk_gb",
                                                            "ipv4_addresses", "ipv6_addresses")),
        "ves": sorted(VE.objects.values_list("ctid", "status", "owner_id", "hostname")),
        "tasks": Task.objects.count(),
        "addresses": IPAddress.objects.count(),
    }


# --- who sees what ----------------------------------------------------------------------------------------


def test_each_reseller_sees_only_its_own_customers_ves_and_tasks_in_pages(world, client_for):
    for me, mine, theirs in (("rita", "carl", "cora"), ("rob", "cora", "carl")):
        c = client_for(world[me])
        own_ve, other_ve = (RITA_VE, ROB_VE) if me == "rita" else (ROB_VE, RITA_VE)
        ves = c.get("/ves/").content.decode()
        assert f"/ves/{own_ve}/" in ves and f"/ves/{other_ve}/" not in ves and f"/ves/{ADMINS_VE}/" not in ves
        tasks = c.get("/tasks/").content.decode()
        own_task = Task.objects.get(ve__ctid=own_ve)
        assert f"/tasks/{own_task.pk}/" in tasks
        for other in (other_ve, ADMINS_VE):
            assert f"/tasks/{Task.objects.get(ve__ctid=other).pk}/" not in tasks
        customers = c.get("/resellers/customers/").content.decode()
        assert world[mine].username in customers and world[theirs].username not in customers
        assert "oscar-owner" not in customers
        plans = c.get("/resellers/plans/").content.decode()
        assert f"{me}-basic" in plans and ("rob-basic" if me == "rita" else "rita-basic") not in plans
        assert c.get(f"/ves/{own_ve}/").status_code == 200
        # the other's objects by id: 404
        for url in [*(u.format(ctid=other_ve) for u in PAGE_GETS), *(u.format(ctid=ADMINS_VE) for u in PAGE_GETS),
                    f"/tasks/{Task.objects.get(ve__ctid=other_ve).pk}/",
                    f"/resellers/customers/{world[theirs].pk}/", f"/resellers/customers/{world['owner'].pk}/",
                    f"/resellers/customers/{world['admin'].pk}/",
                    f"/resellers/plans/{world['rob_plan' if me == 'rita' else 'rita_plan'].pk}/"]:
            assert c.get(url).status_code == 404, url


def test_each_reseller_sees_only_its_own_in_the_api(world, api_for):
    for me, own_ve, other_ve in (("rita", RITA_VE, ROB_VE), ("rob", ROB_VE, RITA_VE)):
        api = api_for(world[me])
        assert [v["ctid"] for v in api.get("/api/ves/").json()["results"]] == [own_ve]
        listed = {t["id"] for t in api.get("/api/tasks/").json()["results"]}
        assert listed == set(Task.objects.filter(ve__ctid=own_ve).values_list("pk", flat=True))
        assert api.get(f"/api/ves/{own_ve}/").status_code == 200
        for ctid in (other_ve, ADMINS_VE):
            task = Task.objects.filter(ve__ctid=ctid).first()
            assert api.get(f"/api/tasks/{task.pk}/").status_code == 404
            assert api.post(f"/api/tasks/{task.pk}/cancel/").status_code == 404
        mine, theirs = (world["carl"], world["cora"]) if me == "rita" else (world["cora"], world["carl"])
        customers = api.get("/api/customers/").json()["results"]
        assert [(c["username"], c["reseller"], c["ves"]) for c in customers] == [(mine.username, me + "-reseller", 1)]
        assert api.get(f"/api/customers/{mine.pk}/").status_code == 200
        for other in (theirs, world["owner"], world["admin"], world["rob" if me == "rita" else "rita"]):
            assert api.get(f"/api/customers/{other.pk}/").status_code == 404
        resellers = api.get("/api/resellers/").json()["results"]
        assert [r["username"] for r in resellers] == [world[me].username]
        assert {u["name"]: (u["limit"], u["used"]) for u in resellers[0]["quota"]} == {
            "ves": (3, 1), "ram_mb": (1024, 256), "disk_gb": (10, 2), "ipv4": (3, 1), "ipv6": (0, 0)}
        assert api.get(f"/api/resellers/{world['rob' if me == 'rita' else 'rita'].pk}/").status_code == 404
    admin_api = api_for(world["admin"])
    assert {c["username"] for c in admin_api.get("/api/customers/").json()["results"]} == {"carl-of-rita",
                                                                                            "cora-of-rob"}
    assert len(admin_api.get("/api/resellers/").json()["results"]) == 2
    customer_api = api_for(world["carl"])
    assert customer_api.get("/api/customers/").json()["results"] == []
    assert customer_api.get(f"/api/resellers/{world['rita'].pk}/").status_code == 404


def test_nothing_of_another_reseller_can_be_changed_by_id(world, client_for, api_for):
    """Rita tries every VE page action and API call on Rob's VE and the admins' customer's VE: 404 each time,
    and nothing changed (no task, no VE state, no user, plan or quota)."""
    before = snapshot_of_rows()
    c, api = client_for(world["rita"]), api_for(world["rita"])
    for ctid in (ROB_VE, ADMINS_VE):
        for url, data in PAGE_POSTS:
            data = {k: v.format(ctid=ctid) if isinstance(v, str) else v for k, v in data.items()}
            assert c.post(url.format(ctid=ctid), data).status_code == 404, url
        for method, url, body in API_CALLS:
            response = getattr(api, method)(url.format(ctid=ctid), body, format="json")
            assert response.status_code == 404, (method, url, response.status_code)
    cora, rob_plan = world["cora"], world["rob_plan"]
    assert c.post(f"/resellers/customers/{cora.pk}/", {"email": "stolen@example.test", "plan": "",
                                                       "is_active": ""}).status_code == 404
    assert c.post(f"/resellers/customers/{cora.pk}/disable/").status_code == 404
    assert c.post(f"/resellers/customers/{world['owner'].pk}/disable/").status_code == 404
    assert c.post(f"/resellers/plans/{rob_plan.pk}/", {"name": "mine-now", "ram_mb": 16, "swap_mb": 0, "cpus": 1,
                                                        "disk_gb": 1, "nproc": 16, "max_ves": 0}).status_code == 404
    assert snapshot_of_rows() == before


def test_a_reseller_acts_on_its_customers_ve_as_its_owner_may(world, client_for, api_for):
    response = api_for(world["rita"]).post(f"/api/ves/{RITA_VE}/stop/", {}, format="json")
    assert response.status_code == 202
    task = Task.objects.get(pk=response.json()["id"])
    assert (task.action, task.user, task.ve.ctid) == ("stop", world["rita"], RITA_VE)
    assert AuditEntry.objects.filter(action="ve.stop", user=world["rita"], ctid=RITA_VE).exists()
    # ... and reads its customers' audit entries, not Rob's side
    Task.objects.filter(pk=task.pk).update(status="completed")
    api_for(world["cora"]).post(f"/api/ves/{ROB_VE}/stop/", {}, format="json")
    page = client_for(world["rita"]).get("/resellers/audit/").content.decode()
    assert "rita-reseller" in page and "cora-of-rob" not in page and f">{ROB_VE}<" not in page
    entries = api_for(world["rita"]).get("/api/audit/").json()["results"]
    assert [(e["action"], e["ctid"]) for e in entries] == [("ve.stop", RITA_VE)]
    robs = AuditEntry.objects.get(ctid=ROB_VE)
    assert api_for(world["rita"]).get(f"/api/audit/{robs.pk}/").status_code == 404
    assert api_for(world["rob"]).get(f"/api/audit/{robs.pk}/").status_code == 200
    assert api_for(world["carl"]).get("/api/audit/").status_code == 403  # customers: no audit log


# --- what a reseller may not do ----------------------------------------------------------------------------


@pytest.mark.parametrize("crafted", [
    {"role": "admin"}, {"role": "reseller"}, {"role": "teacher"}, {"is_staff": "on"}, {"is_superuser": "on"},
])
def test_a_reseller_cannot_create_a_privileged_user(world, client_for, crafted):
    before = snapshot_of_rows()
    response = client_for(world["rita"]).post("/resellers/customers/new/", {
        "username": "eve-sneaky", "email": "eve@example.test", "password1": PASSWORD, "password2": PASSWORD,
        "plan": world["rita_plan"].pk, **crafted})
    assert response.status_code == 400
    assert "Resellers manage their own customers only" in response.content.decode()
    assert snapshot_of_rows() == before


def test_a_reseller_cannot_make_its_customer_privileged_or_anothers(world, client_for):
    carl = world["carl"]
    before = snapshot_of_rows()
    c = client_for(world["rita"])
    for crafted in ({"role": "admin"}, {"reseller": world["rob"].pk}, {"is_superuser": "on"}):
        response = c.post(f"/resellers/customers/{carl.pk}/", {"email": carl.email, "plan": carl.plan_id,
                                                               "is_active": "on", **crafted})
        assert response.status_code == 400
        assert "Resellers manage their own customers only" in response.content.decode()
    assert snapshot_of_rows() == before


def test_a_reseller_cannot_give_another_resellers_or_the_admins_plan(world, client_for, plan):
    before = snapshot_of_rows()
    c = client_for(world["rita"])
    for other in (world["rob_plan"], plan):
        response = c.post("/resellers/customers/new/", {"username": "new-one", "email": "n@example.test",
                                                        "password1": PASSWORD, "password2": PASSWORD,
                                                        "plan": other.pk})
        assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
        response = c.post(f"/resellers/customers/{world['carl'].pk}/", {"email": "c@example.test", "plan": other.pk,
                                                                         "is_active": "on"})
        assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert snapshot_of_rows() == before


def test_a_reseller_cannot_set_its_own_quota_or_reach_the_admin_pages(world, client_for):
    rita = world["rita"]
    before = snapshot_of_rows()
    c = client_for(rita)
    for url in ("/resellers/manage/", "/resellers/manage/new/", f"/resellers/manage/{rita.pk}/", "/account/users/",
                "/account/users/new/", f"/account/users/{rita.pk}/", "/plans/", "/audit/"):
        assert c.get(url).status_code == 404, url
    bigger = {"quota-max_ves": 99, "quota-ram_mb": 99999, "quota-disk_gb": 9999, "quota-ipv4_addresses": 99,
              "quota-ipv6_addresses": 99}
    assert c.post(f"/resellers/manage/{rita.pk}/", bigger).status_code == 404
    assert c.post("/account/users/new/", {"username": "eve", "role": "admin", "password1": PASSWORD,
                                          "password2": PASSWORD}).status_code == 404
    assert c.post(f"/account/users/{rita.pk}/", {"role": "admin", "is_active": "on"}).status_code == 404
    assert snapshot_of_rows() == before
    # a customer and the admins' customer get none of the reseller pages
    for user in (world["carl"], world["owner"]):
        for url in ("/resellers/", "/resellers/customers/", "/resellers/plans/", "/resellers/audit/"):
            assert client_for(user).get(url).status_code == 404


# --- the reseller's pages ---------------------------------------------------------------------------------


def test_the_pages_render_for_their_users_with_a_menu_entry(world, client_for):
    rita, admin = world["rita"], world["admin"]
    for user, urls in ((rita, ["/resellers/", "/resellers/customers/", "/resellers/customers/new/",
                               f"/resellers/customers/{world['carl'].pk}/", "/resellers/plans/",
                               "/resellers/plans/new/", f"/resellers/plans/{world['rita_plan'].pk}/",
                               "/resellers/audit/"]),
                       (admin, ["/resellers/manage/", "/resellers/manage/new/", f"/resellers/manage/{rita.pk}/"])):
        for url in urls:
            assert client_for(user).get(url).status_code == 200, url
    nav = client_for(rita).get("/ves/").content.decode()
    assert 'href="/resellers/customers/">Customers</a>' in nav and 'href="/resellers/plans/">Plans</a>' in nav
    assert 'href="/account/users/"' not in nav
    assert 'href="/resellers/manage/">Resellers</a>' in client_for(admin).get("/ves/").content.decode()
    assert 'href="/resellers/customers/"' not in client_for(world["carl"]).get("/ves/").content.decode()


def test_a_reseller_creates_edits_and_disables_a_customer_with_its_own_plan(world, client_for):
    rita, plan = world["rita"], world["rita_plan"]
    c = client_for(rita)
    response = c.post("/resellers/customers/new/", {"username": "dora-of-rita", "email": "dora@example.test",
                                                    "password1": PASSWORD, "password2": PASSWORD, "plan": plan.pk})
    assert response.status_code == 302
    dora = User.objects.get(username="dora-of-rita")
    assert (dora.role, dora.reseller, dora.plan, dora.is_staff, dora.is_superuser) == ("customer", rita, plan,
                                                                                        False, False)
    assert dora.check_password(PASSWORD)
    assert AuditEntry.objects.filter(action="user.create", user=rita, detail__contains="dora-of-rita").exists()
    response = c.post(f"/resellers/customers/{dora.pk}/", {"email": "dora2@example.test", "plan": "",
                                                           "is_active": "on"})
    assert response.status_code == 302
    dora.refresh_from_db()
    assert dora.email == "dora2@example.test" and dora.plan is None
    assert c.post(f"/resellers/customers/{dora.pk}/disable/").status_code == 302
    dora.refresh_from_db()
    assert not dora.is_active
    assert client_for(dora).get("/ves/").status_code == 302  # signed out: disabled


def test_a_reseller_makes_plans_with_the_admins_validation(world, client_for):
    rita = world["rita"]
    c = client_for(rita)
    good = {"name": "rita-pro", "description": "", "ram_mb": 512, "swap_mb": 0, "cpus": 1, "disk_gb": 4,
            "nproc": 256, "max_ves": 2, "console_mode": "root"}
    response = c.post("/resellers/plans/new/", {**good, "ram_mb": 0})
    assert response.status_code == 400 and "0 is not allowed here" in response.content.decode()
    response = c.post("/resellers/plans/new/", {**good, "cpus": 999})
    assert response.status_code == 400 and "No node has 999 CPUs" in response.content.decode()
    response = c.post("/resellers/plans/new/", {**good, "ram_mb": 2048})  # one VE beyond the whole quota
    assert response.status_code == 400
    assert "One VE of this plan takes 2048 MB of RAM; the whole reseller quota is 1024 MB of RAM." in (
        response.content.decode())
    response = c.post("/resellers/plans/new/", {**good, "owner": world["rob"].pk})
    assert response.status_code == 400 and "“owner” cannot be set here" in response.content.decode()
    assert not Plan.objects.filter(name="rita-pro").exists()
    assert c.post("/resellers/plans/new/", good).status_code == 302
    assert Plan.objects.get(name="rita-pro").owner == rita


def test_the_usage_page_adds_up_the_customers_ves_by_plan(world, client_for, node):
    make_ve(world["carl"], node, 302)  # a second VE of Carl: 2 x 256 MB, 2 x 2 GB, 2 addresses by the plan
    page = client_for(world["rita"]).get("/resellers/").content.decode()
    for row in ('id="quota-ves"><td>VEs</td><td>2 </td><td>3 </td><td>1 </td>',
                'id="quota-ram_mb"><td>RAM</td><td>512 MB</td><td>1024 MB</td><td>512 MB</td>',
                'id="quota-disk_gb"><td>disk</td><td>4 GB</td><td>10 GB</td><td>6 GB</td>',
                'id="quota-ipv4"><td>IPv4 addresses</td><td>2 </td><td>3 </td><td>1 </td>'):
        assert row in page


# --- the quota ------------------------------------------------------------------------------------------------


def test_a_ve_beyond_the_quota_is_refused_by_page_and_api(world, client_for, api_for):
    quota = world["rita"].reseller_quota
    quota.max_ves = 1
    quota.save()
    before = snapshot_of_rows()
    response = client_for(world["carl"]).post("/ves/new/", NEW_VE)
    assert response.status_code == 400
    said = "The reseller quota allows 1 VEs: 1 in use and this asks for 1 more (0 left)."
    assert said in response.content.decode()
    response = api_for(world["carl"]).post("/api/ves/", {"ostemplate": "tiny"}, format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == f"Beyond the quota of reseller rita-reseller: {said} Nothing was changed."
    assert snapshot_of_rows() == before
    # Rob's customer is not held to Rita's quota
    assert api_for(world["cora"]).post("/api/ves/", {"ostemplate": "tiny"}, format="json").status_code == 202


def test_ram_beyond_the_quota_is_refused_and_an_admin_creating_for_the_customer_too(world, client_for, api_for):
    quota = world["rita"].reseller_quota
    quota.ram_mb = 400  # Carl's VE takes 256 already; one more would be 512
    quota.save()
    before = snapshot_of_rows()
    response = api_for(world["admin"]).post("/api/ves/", {"ostemplate": "tiny", "owner": "carl-of-rita"},
                                            format="json")
    assert response.status_code == 403
    assert ("The reseller quota allows 400 MB of RAM: 256 MB in use and this asks for 256 MB more (144 MB left)."
            in response.json()["detail"])
    assert snapshot_of_rows() == before


def test_raising_a_plan_beyond_the_quota_is_refused_and_changes_nothing(world, client_for, node):
    make_ve(world["carl"], node, 302, status="stopped")  # two VEs on rita-basic: 512 MB of 1024
    plan = world["rita_plan"]
    data = {"name": plan.name, "description": "", "ram_mb": 768, "swap_mb": 0, "cpus": 1, "disk_gb": 2,
            "nproc": 128, "max_ves": 3, "console_mode": "root"}
    before = snapshot_of_rows()
    response = client_for(world["rita"]).post(f"/resellers/plans/{plan.pk}/", data)
    assert response.status_code == 400
    assert ("The reseller quota allows 1024 MB of RAM: 512 MB in use and this asks for 1024 MB more (512 MB left)."
            in response.content.decode())
    # the admins' plan page holds a reseller's plan to the same quota
    response = client_for(world["admin"]).post(f"/plans/{plan.pk}/", data)
    assert response.status_code == 400 and "Beyond the quota of reseller rita-reseller" in response.content.decode()
    assert snapshot_of_rows() == before
    assert not Task.objects.filter(action="set_limits").exists()


def test_giving_a_plan_beyond_the_quota_is_refused_by_the_reseller_and_the_admin(world, client_for, node):
    rita, carl = world["rita"], world["carl"]
    make_ve(carl, node, 302)
    big = make_plan("rita-big", rita, ram_mb=600)  # 2 x 600 > 1024
    before = snapshot_of_rows()
    response = client_for(rita).post(f"/resellers/customers/{carl.pk}/", {"email": carl.email, "plan": big.pk,
                                                                          "is_active": "on"})
    assert response.status_code == 400
    said = "The reseller quota allows 1024 MB of RAM: 512 MB in use and this asks for 688 MB more (512 MB left)."
    assert said in response.content.decode()
    response = client_for(world["admin"]).post(f"/account/users/{carl.pk}/", {
        "email": carl.email, "first_name": "", "last_name": "", "role": "customer", "plan": big.pk, "teacher": "",
        "is_active": "on", "new_password": ""})
    assert response.status_code == 400 and said in response.content.decode()
    assert snapshot_of_rows() == before
    assert not Task.objects.filter(action="set_limits").exists()


def test_an_address_beyond_the_quota_is_refused(world, api_for, node):
    from tests.panel.hosting_helpers import pool

    p = pool(node, "pub", "10.1.6.0/28")
    ve = world["ves"][RITA_VE]
    IPAddress.objects.create(pool=p, address="10.1.6.2", ve=ve)
    plan = world["rita_plan"]
    plan.ipv4_addresses = 3  # the plan would allow more; Rita's quota has 3, and the plan's 3 take them all
    plan.save()
    quota = world["rita"].reseller_quota
    quota.ipv4_addresses = 3
    quota.save()
    api = api_for(world["carl"])
    url = f"/api/ves/{RITA_VE}/network/addresses/"
    assert api.post(url, {"version": 4}, format="json").status_code == 202  # within the plan's 3: takes no more
    Task.objects.filter(ve=ve).update(status="completed")
    # an admin adds beyond the plan: the reseller's quota still holds
    IPAddress.objects.create(pool=p, address="10.1.6.10", ve=ve)  # now 3 held
    before = snapshot_of_rows()
    response = api_for(world["admin"]).post(url, {"version": 4}, format="json")
    assert response.status_code == 403
    assert ("The reseller quota allows 3 IPv4 addresses: 3 in use and this asks for 1 more (0 left)."
            in response.json()["detail"])
    assert snapshot_of_rows() == before


def test_an_admin_creates_a_reseller_and_sets_its_quota(world, client_for):
    c = client_for(world["admin"])
    response = c.post("/resellers/manage/new/", {
        "user-username": "ria-new", "user-email": "ria@example.test", "user-password1": PASSWORD,
        "user-password2": PASSWORD, "quota-max_ves": 5, "quota-ram_mb": 2048, "quota-disk_gb": 50,
        "quota-ipv4_addresses": 5, "quota-ipv6_addresses": 5})
    assert response.status_code == 302
    ria = User.objects.get(username="ria-new")
    assert ria.role == "reseller" and not ria.is_staff
    assert ria.reseller_quota.amounts().ram_mb == 2048
    # lowering Rita's quota below her use: saved, said, nothing removed
    response = c.post(f"/resellers/manage/{world['rita'].pk}/", {
        "quota-max_ves": 0, "quota-ram_mb": 100, "quota-disk_gb": 1, "quota-ipv4_addresses": 0,
        "quota-ipv6_addresses": 0}, follow=True)
    assert "already take 256 MB RAM (quota 100)" in response.content.decode()
    assert VE.objects.get(ctid=RITA_VE).status == "running"
    page = c.get("/resellers/manage/").content.decode()
    assert "rita-reseller" in page and "ria-new" in page
    assert AuditEntry.objects.filter(action="reseller.quota", detail__contains="rita-reseller").exists()


# --- for real: a VE through the node agent -------------------------------------------------------------------


def engine_ram(engine, ctid) -> int:
    return engine.usage(ctid)["memory_limit_bytes"]


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_a_resellers_customer_gets_a_real_ve_within_quota_and_plan_raises_stay_within_it(node_agent, engine,
                                                                                          node, client_for):
    rita = make_reseller("rita-reseller", max_ves=2, ram_mb=512)
    plan = make_plan("rita-basic", rita)
    carl = make_customer("carl-of-rita", rita, plan)
    response = client_for(carl).post("/ves/new/", NEW_VE)
    assert response.status_code == 302, response.content.decode()[:2000]
    task = wait_task(Task.objects.get(action="create"))
    assert task.status == "completed", (task.error, task.log)
    ctid = task.ve.ctid
    assert engine.status(ctid).status == "running"
    assert engine_ram(engine, ctid) == 256 << 20

    # beyond the quota (512 MB): refused, the plan, the VE's row and the engine's limit as they were
    data = {"name": plan.name, "description": "", "ram_mb": 600, "swap_mb": 0, "cpus": 1, "disk_gb": 2,
            "nproc": 128, "max_ves": 3, "console_mode": "root"}
    response = client_for(rita).post(f"/resellers/plans/{plan.pk}/", data)
    assert response.status_code == 400 and "allows 512 MB of RAM: 256 MB in use" in response.content.decode()
    plan.refresh_from_db()
    assert plan.ram_mb == 256 and VE.objects.get(ctid=ctid).limits["ram_mb"] == 256
    assert engine_ram(engine, ctid) == 256 << 20
    assert not Task.objects.filter(action="set_limits").exists()

    # within it: the reseller's plan edit reaches the running VE live
    response = client_for(rita).post(f"/resellers/plans/{plan.pk}/", {**data, "ram_mb": 384}, follow=True)
    assert response.status_code == 200
    task = wait_task(Task.objects.get(action="set_limits"))
    assert task.status == "completed", (task.error, task.log)
    assert engine_ram(engine, ctid) == 384 << 20
    assert VE.objects.get(ctid=ctid).limits["ram_mb"] == 384

    # another reseller sees none of it
    rob = make_reseller("rob-reseller")
    assert client_for(rob).get(f"/ves/{ctid}/").status_code == 404
