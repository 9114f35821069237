"""Issue 15: hosting customers' VEs get addresses from their node's pools, reachable for real."""

from __future__ import annotations

import secrets
import subprocess

import pytest

from .conftest import make_user, wait_task
from .hosting_helpers import PING, TEMPLATE, client_namespace, debian_template, pool, wait_ok

# --- pools: admins only, bad ones refused in words ---------------------------------------------------


@pytest.mark.parametrize("network, gateway, message", [
    ("10.1.2.3/24", "", "has host bits set"),
    ("not-a-net", "", "is not a network"),
    ("10.1.2.0/24", "10.9.9.1", "is not inside"),
    ("10.1.0.0/16", "", "overlaps pool first"),
])
def test_it_refuses_bad_or_overlapping_pools_in_words(client_for, admin, node, network, gateway, message):
    from vzpanel.nodes.models import IPPool

    pool(node, "first", "10.1.2.0/25")
    r = client_for(admin).post("/ves/pools/", {"node": node.pk, "name": "p2", "network": network, "kind": "public",
                                               "gateway": gateway, "nameservers": ""})
    assert r.status_code == 400
    assert message in r.content.decode()
    assert IPPool.objects.count() == 1


def test_the_pools_page_is_for_admins_only(client_for, admin, owner, node):
    assert client_for(owner).get("/ves/pools/").status_code == 404
    r = client_for(admin).post("/ves/pools/", {"node": node.pk, "name": "pub", "network": "10.1.3.0/26",
                                               "kind": "public", "gateway": "", "nameservers": "10.1.3.1"})
    assert r.status_code == 302
    assert "10.1.3.0/26" in client_for(admin).get("/ves/pools/").content.decode()


# --- addresses: within the plan and the pool, nothing changed on refusal ---------------------------


def test_it_refuses_bad_addresses_and_changes_nothing(client_for, api_for, owner, outsider, owner_ve, node):
    from vzpanel.nodes.models import IPAddress
    from vzpanel.tasks.models import Task

    p = pool(node, "pub", "10.1.4.0/28")
    IPAddress.objects.create(pool=p, address="10.1.4.2", ve=owner_ve)  # the plan's one IPv4
    other = make_user("other-customer", "customer", plan=owner.plan)
    from .conftest import make_ve
    other_ve = make_ve(other, node, 102)
    IPAddress.objects.create(pool=p, address="10.1.4.3", ve=other_ve)
    api = api_for(owner)
    url = f"/api/ves/{owner_ve.ctid}/network/addresses/"
    assert "allows 1 IPv4" in api.post(url, {"version": 4}, format="json").json()["detail"]
    owner.plan.ipv4_addresses = 3
    owner.plan.save()
    for address, status, words in [("10.9.9.9", 400, "in none of node"), ("10.1.4.0", 400, "network, broadcast"),
                                   ("10.1.4.3", 409, "already in use"), ("nonsense", 400, "not an IP address")]:
        r = api.post(url, {"address": address}, format="json")
        assert r.status_code == status, r.json()
        assert words in r.json()["detail"]
    r = client_for(owner).post(f"/ves/{owner_ve.ctid}/network/add/", {"version": 4, "address": "10.1.4.3"})
    assert r.status_code == 409 and "already in use" in r.content.decode()
    assert IPAddress.objects.filter(ve=owner_ve).count() == 1
    assert not Task.objects.filter(action="address_add").exists()
    # outsiders get 404 for everything about it
    for path in (f"/api/ves/{owner_ve.ctid}/network/", url):
        assert api_for(outsider).get(path).status_code in (404, 405)
        assert api_for(outsider).post(path, {"version": 4}, format="json").status_code in (404, 405)
    assert client_for(outsider).get(f"/ves/{owner_ve.ctid}/network/").status_code == 404
    assert client_for(outsider).post(f"/ves/{owner_ve.ctid}/network/add/", {"version": 4}).status_code == 404


def test_reverse_dns_is_stored_exposed_and_exported(api_for, owner, owner_ve, node):
    from django.core.management import call_command

    from vzpanel.nodes import pools
    from vzpanel.nodes.models import IPAddress

    p = pool(node, "pub", "10.1.5.0/28")
    IPAddress.objects.create(pool=p, address="10.1.5.2", ve=owner_ve)
    seen = []
    pools.reverse_dns_changed.connect(lambda sender, address, name, **kw: seen.append((address.address, name)),
                                      weak=False, dispatch_uid="test-rdns")
    api = api_for(owner)
    r = api.post(f"/api/ves/{owner_ve.ctid}/network/reverse-dns/", {"address": "10.1.5.2",
                                                                    "reverse_dns": "bad name!"}, format="json")
    assert r.status_code == 400 and "not a fully qualified" in r.json()["detail"]
    r = api.post(f"/api/ves/{owner_ve.ctid}/network/reverse-dns/", {"address": "10.1.5.2",
                                                                    "reverse_dns": "www.example.com"}, format="json")
    assert r.status_code == 200
    assert r.json()["addresses"][0]["reverse_dns"] == "www.example.com"
    assert seen == [("10.1.5.2", "www.example.com")]
    import io

    out = io.StringIO()
    call_command("export_rdns", stdout=out)
    assert "10.1.5.2 www.example.com" in out.getvalue()
    pools.reverse_dns_changed.disconnect(dispatch_uid="test-rdns")


# --- for real: a VE reachable from a namespace the test made -----------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_a_page_created_ve_on_a_public_pool_answers_ping_and_gives_it_back(node_agent, net, client_for, owner,
                                                                             node):
    from vzpanel.nodes.models import IPAddress
    from vzpanel.tasks.models import Task
    from vzpanel.ves.models import VE

    debian_template(node)
    pool(node, "public", f"{net.prefix}.0/26")
    r = client_for(owner).post("/ves/new/", {"ostemplate": TEMPLATE, "hostname": "web1", "root_password": "",
                                             "start": "on"})
    assert r.status_code == 302, r.content.decode()[:2000]
    task = wait_task(Task.objects.get(action="create"), timeout=300)
    assert task.status == "completed", (task.error, task.log)
    ve = VE.objects.get(pk=task.ve_id)
    rows = list(IPAddress.objects.filter(ve=ve))
    assert [r.address for r in rows] == [net.ip(2)]  # .0 network, .1 the host's
    assert ve.ip_addresses == [net.ip(2)]
    page = client_for(owner).get(f"/ves/{ve.ctid}/network/").content.decode()
    assert net.ip(2) in page and "ssh -p" not in page  # public: no forward
    with client_namespace() as (run, _host):
        assert wait_ok(run, ["python3", "-c", PING, net.ip(2)]).returncode == 0
    task = client_for(owner).post(f"/ves/{ve.ctid}/destroy/", {"confirm": str(ve.ctid)})
    task = wait_task(Task.objects.filter(action="destroy").latest("pk"), timeout=120)
    assert task.status == "completed", task.error
    assert not IPAddress.objects.exists()  # released


@pytest.mark.root
@pytest.mark.slow
def test_an_api_created_ve_on_a_private_pool_takes_ssh_with_the_customers_key(node_agent, net, api_for, owner, node,
                                                                             tmp_path, monkeypatch):
    from vzpanel.nodes.models import IPAddress
    from vzpanel.tasks.models import Task
    from vzpanel.ves.models import VE

    first = 20000 + secrets.randbelow(20000)
    monkeypatch.setenv("VZPANEL_SSH_PORTS", f"{first}-{first + 50}")
    debian_template(node)
    pool(node, "private", f"{net.prefix}.64/26", kind="private")
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    api = api_for(owner)
    r = api.post("/api/ssh-keys/", {"name": "laptop", "key": key.with_suffix(".pub").read_text()}, format="json")
    assert r.status_code == 201, r.json()
    r = api.post("/api/ves/", {"ostemplate": TEMPLATE, "hostname": "api1", "start": True}, format="json")
    assert r.status_code == 202, r.json()
    task = wait_task(Task.objects.get(pk=r.json()["id"]), timeout=300)
    assert task.status == "completed", (task.error, task.log)
    ve = VE.objects.get(pk=task.ve_id)
    netinfo = api.get(f"/api/ves/{ve.ctid}/network/").json()
    assert [a["address"] for a in netinfo["addresses"]] == [net.ip(66)]
    port = netinfo["ssh_port"]
    assert first <= port <= first + 50 and netinfo["ssh_command"].startswith(f"ssh -p {port} root@")
    # password log-in off: keys only
    r = api.post(f"/api/ves/{ve.ctid}/network/ssh-keys/", {"password_login": False}, format="json")
    assert r.status_code == 202
    assert wait_task(Task.objects.get(pk=r.json()["id"])).status == "completed"
    with client_namespace() as (run, host):
        ssh = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(port), f"root@{host}"]
        r = wait_ok(run, [*ssh, "cat /etc/ssh/sshd_config.d/vzpanel.conf; stat -c %a /root/.ssh "
                                "/root/.ssh/authorized_keys"])
        assert r.returncode == 0, r.stderr
        assert "PermitRootLogin prohibit-password" in r.stdout and "700\n600" in r.stdout
        # a password is refused before any is asked for
        r = run("ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                "PreferredAuthentications=password", "-o", "BatchMode=yes", "-p", str(port), f"root@{host}", "true")
        assert r.returncode != 0
    # a second address beyond the plan (1 IPv4) is refused, nothing changed
    r = api.post(f"/api/ves/{ve.ctid}/network/addresses/", {"version": 4}, format="json")
    assert r.status_code == 403 and IPAddress.objects.filter(ve=ve).count() == 1
    r = api.delete(f"/api/ves/{ve.ctid}/", format="json")
    assert wait_task(Task.objects.get(pk=r.json()["id"])).status == "completed"
    assert not IPAddress.objects.exists()
