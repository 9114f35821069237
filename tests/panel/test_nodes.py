"""Many nodes from one panel: joining a node with its own Redis credentials, and taking it away again.

A joined node's agent reaches the panel's Redis over TLS on an address other than 127.0.0.1, with its own ACL
user that serve keeps across restarts; its credentials are refused on every other node's keys, for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import redis

from tests.panel.conftest import REPO, free_port, make_ve, wait_task
from tests.panel.test_privilege_split import NODE, Panel, state_top
from vzpanel.agent import protocol
from vzpanel.nodes.join import CA_ON_NODE, agent_url, joins_dir, request_join

NEW = "node2"


def manage(state, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "DATABASE_URL"}
    env.update(VZPANEL_STATE=str(state), DJANGO_SETTINGS_MODULE="vzpanel.settings", VZPANEL_NODE=NODE)
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def node_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


def panel_client(state) -> redis.Redis:
    password = (state / "secrets" / "redis-panel").read_text().strip()
    return redis.Redis(unix_socket_path=str(state / "run" / "redis" / "redis.sock"), username="panel",
                       password=password)


@pytest.mark.root
def test_a_joined_node_reaches_its_own_keys_over_tls_and_nothing_else(vz_root, monkeypatch):
    top = state_top()
    panel = Panel(top / "state", vz_root)
    try:
        panel.start()
        panel.stop()
        port = free_port()
        refused = manage(panel.state, "node", "add", "Bad_Name")
        assert refused.returncode != 0 and "not a node name" in refused.stderr
        added = manage(panel.state, "node", "add", NEW, "--redis-host", "127.0.0.2", "--redis-port", str(port))
        assert added.returncode == 0, added.stderr
        assert f"node {NEW} added" in added.stdout
        url = re.search(r"VZPANEL_AGENT_REDIS_URL='([^']+)'", added.stdout).group(1)
        assert url.startswith("rediss://") and f"--node {NEW}" in added.stdout
        url = url.replace(CA_ON_NODE, str(panel.state / "redis-tls" / "cert.pem"))

        # The Add node page's way (the web user cannot write root's secrets): a join request holding the hash.
        # One made for the panel's own node must not replace that node's user.
        joins = joins_dir(panel.state)
        page_url = agent_url("node3", request_join(joins, "node3"), "127.0.0.2", port).replace(
            CA_ON_NODE, str(panel.state / "redis-tls" / "cert.pem"))
        forged_url = agent_url(NODE, request_join(joins, NODE), "127.0.0.2", port).replace(
            CA_ON_NODE, str(panel.state / "redis-tls" / "cert.pem"))
        web = os.stat(panel.state / "data")  # the web user's, as when its page made them
        for path in (joins, *joins.iterdir()):
            os.chown(path, web.st_uid, web.st_gid)

        monkeypatch.setenv("VZPANEL_REDIS_LISTEN", f"127.0.0.2:{port}")
        for _restart in range(2):  # the node's user survives a restart of serve
            panel.start()
            check_node_credentials(panel.state, url)
            page_node = node_client(page_url)
            page_node.lpush(protocol.requests_key("node3"), "probe")
            assert page_node.lrem(protocol.requests_key("node3"), 1, "probe") == 1
            with pytest.raises(redis.exceptions.NoPermissionError):
                page_node.lpush(protocol.requests_key(NEW), "forged")
            with pytest.raises(redis.AuthenticationError):
                node_client(forged_url).ping()
            panel.stop()

        removed = manage(panel.state, "node", "remove", NEW)
        assert removed.returncode == 0, removed.stderr
        assert not (panel.state / "secrets" / f"redis-agent-{NEW}").exists()
        panel.start()
        with pytest.raises(redis.AuthenticationError):
            node_client(url).ping()
        assert manage(panel.state, "node", "remove", NEW).returncode != 0  # no such node any more
    finally:
        panel.stop()
        shutil.rmtree(top, ignore_errors=True)


def layer_send(url: str, channel: str, message: dict) -> None:
    """Send as a node's console daemon does: the panel's channel layer, with the node's credentials."""
    import asyncio

    from vzpanel.lib.channels import RedisChannelLayer

    async def send():
        layer = RedisChannelLayer(hosts=[{"address": url}])
        try:
            await layer.send(channel, message)
        finally:
            await layer.close_pools()

    asyncio.run(send())


def check_node_credentials(state, url):
    """The new node's user works on its own keys; on the local node's it is refused, and they stay as they were."""
    plain = redis.Redis(host="127.0.0.2", port=int(url.rsplit(":", 1)[1].split("/")[0]), socket_timeout=5)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # TLS only on the node port
    own = node_client(url)
    assert own.ping()
    own.lpush(protocol.requests_key(NEW), "probe")  # the panel's own requests may wait there too
    assert own.lrem(protocol.requests_key(NEW), 1, "probe") == 1
    victim = panel_client(state)
    reply = protocol.reply_key(NODE, "nodes-test")  # a reply of the local node's agent, waiting for the panel
    victim.lpush(reply, "genuine")
    # The channel layer: the local console daemon's channel (a message there opens a console on the local
    # node's VEs; the running daemon pops what comes, so only the refusals show), and a web process's channel
    # holding console output for a browser.
    local_console, web_inbox = f"asgiconsole.{NODE}", "asgispecific.0123456789abcdef!"
    victim.zadd(web_inbox, {b"genuine-output": time.time()})  # (scored as the layer does: when sent)
    try:
        # its own console channel, and a reply into a web process's channel: the send script, as its daemon
        own.zadd(f"asgiconsole.{NEW}", {b"own": 1})
        assert own.zpopmin(f"asgiconsole.{NEW}") == [(b"own", 1.0)]
        layer_send(url, "specific.0123456789abcdef!viewer1", {"type": "console.output"})
        assert victim.zcard(web_inbox) == 2
        victim.zremrangebyrank(web_inbox, 1, 1)
        for attack in (lambda: own.zadd(local_console, {b"forged-open": 2}),
                       lambda: own.zpopmin(local_console),
                       lambda: own.bzpopmin([local_console], timeout=1),
                       lambda: layer_send(url, f"console.{NODE}", {"type": "console.open"}),
                       lambda: own.zpopmin(web_inbox),
                       lambda: own.zrange(web_inbox, 0, -1),
                       lambda: own.publish("rq:pubsub:worker-1", '{"command": "shutdown"}'),
                       lambda: own.lpush(protocol.requests_key(NODE), "forged"),
                       lambda: own.blpop([protocol.requests_key(NODE)], timeout=1),
                       lambda: own.lpush(reply, "forged reply"),
                       lambda: own.blpop([reply], timeout=1),
                       lambda: own.set(protocol.alive_key(NODE), "1"),
                       lambda: own.keys("*"),
                       lambda: own.scan(0),
                       own.flushall,
                       lambda: own.config_get("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attack()
        assert victim.lrange(reply, 0, -1) == [b"genuine"]
        assert victim.zrange(web_inbox, 0, -1) == [b"genuine-output"]
    finally:
        victim.delete(reply, local_console, web_inbox)


@pytest.mark.django_db
def test_removing_a_node_is_refused_while_it_holds_ves_and_changes_nothing(owner):
    from django.core.management import CommandError, call_command

    from vzpanel.nodes.models import Node

    node = Node.objects.create(name=NEW)
    make_ve(owner, node, 4242)
    with pytest.raises(CommandError, match=r"still holds 1 VE\(s\)"):
        call_command("node", "unregister", NEW)
    assert Node.objects.filter(name=NEW).exists() and node.ves.count() == 1


# --- placement: where create_ve puts a new VE (two Node rows, real Redis for the agents' alive keys) ---------


@pytest.fixture
def two_nodes(node):
    """The local node and node2, both with the template tiny and 4 GB, both agents alive (their real alive
    keys in the panel's Redis, as the agents set them); the keys go at the end."""
    from vzpanel.nodes.models import Node, Template
    from vzpanel.tasks.queue import get_redis

    other = Node.objects.create(name=NEW, ram_mb=4096)
    Node.objects.filter(pk=node.pk).update(ram_mb=4096)
    node.refresh_from_db()
    Template.objects.create(node=other, name="tiny", built=True)
    r = get_redis()
    keys = [protocol.alive_key(n.name) for n in (node, other)]
    for key in keys:
        r.set(key, "1", ex=600)
    try:
        yield node, other
    finally:
        r.delete(*keys)


def set_alive(name: str, alive: bool) -> None:
    from vzpanel.tasks.queue import get_redis

    r = get_redis()
    r.set(protocol.alive_key(name), "1", ex=600) if alive else r.delete(protocol.alive_key(name))


def counts():
    from vzpanel.tasks.models import Task
    from vzpanel.ves.models import VE

    return VE.objects.count(), Task.objects.count()


def test_a_new_ve_goes_to_the_least_loaded_node_that_is_up_and_not_in_maintenance(two_nodes, owner, admin):
    from vzpanel.ves import services
    from vzpanel.ves.models import VE

    local, other = two_nodes
    busy = make_ve(admin, local, 4000)
    VE.objects.filter(pk=busy.pk).update(limits={"ram_mb": 2048})  # local: half its memory committed
    assert services.create_ve(owner, ostemplate="tiny").ve.node == other
    other.maintenance = True
    other.save()
    assert services.create_ve(owner, ostemplate="tiny").ve.node == local
    other.maintenance = False
    other.save()
    set_alive(other.name, False)
    assert services.create_ve(admin, ostemplate="tiny").ve.node == local


def test_when_no_node_fits_the_error_says_why_for_each_and_nothing_is_made(two_nodes, owner, api_for):
    from vzpanel.nodes.models import Template

    local, other = two_nodes
    Template.objects.create(node=other, name="alpine")  # only node2 has it, and node2 is down
    set_alive(other.name, False)
    before = counts()
    response = api_for(owner).post("/api/ves/", {"ostemplate": "alpine"}, format="json")
    assert response.status_code == 409, response.content
    detail = response.json()["detail"]
    assert f"{local.name}: no template alpine" in detail and f"{other.name}: agent down" in detail
    assert "nothing was created" in detail and counts() == before


def test_a_node_full_of_memory_or_out_of_addresses_is_skipped(two_nodes, owner, admin):
    from vzpanel.nodes.models import IPAddress, IPPool
    from vzpanel.ves import services
    from vzpanel.ves.models import VE

    local, other = two_nodes
    VE.objects.filter(pk=make_ve(admin, local, 4001).pk).update(limits={"ram_mb": 4000})  # local: full
    pool = IPPool.objects.create(node=other, name="tiny", network="192.0.2.0/30", gateway="192.0.2.1")
    IPAddress.objects.create(pool=pool, address="192.0.2.2", ve=make_ve(admin, other, 4002))  # its only one
    before = counts()
    with pytest.raises(services.ActionRefused) as refused:
        services.create_ve(owner, ostemplate="tiny")
    assert f"{local.name}: not enough memory" in refused.value.message
    assert f"{other.name}: no free address" in refused.value.message and counts() == before
    pool.addresses.all().delete()
    assert services.create_ve(owner, ostemplate="tiny").ve.node == other


def test_an_admin_may_name_the_node_and_it_must_still_fit(two_nodes, admin, client_for, api_for):
    from vzpanel.ves.models import VE

    local, other = two_nodes
    response = client_for(admin).post("/ves/new/", {"ostemplate": "tiny", "node": local.name, "start": "on"})
    assert response.status_code == 302, response.content.decode()
    assert VE.objects.latest("pk").node == local
    response = api_for(admin).post("/api/ves/", {"ostemplate": "tiny", "node": other.name}, format="json")
    assert response.status_code == 202, response.content
    assert VE.objects.latest("pk").node == other
    other.maintenance = True
    other.save()
    before = counts()
    response = api_for(admin).post("/api/ves/", {"ostemplate": "tiny", "node": other.name}, format="json")
    assert response.status_code == 409 and f"{other.name}: in maintenance" in response.json()["detail"]
    assert counts() == before


@pytest.mark.parametrize("name, status, says", [
    ("node9", 400, "There is no node 'node9'"),
    ("Bad Name!", 400, "A node name is lower-case letters"),
    ("templates", 400, "There is no node 'templates'"),
])
def test_an_admin_naming_a_bad_node_is_told_and_nothing_is_made(two_nodes, admin, api_for, client_for,
                                                                  name, status, says):
    before = counts()
    response = api_for(admin).post("/api/ves/", {"ostemplate": "tiny", "node": name}, format="json")
    assert response.status_code == status and says in str(response.json()), response.content
    response = client_for(admin).post("/ves/new/", {"ostemplate": "tiny", "node": name})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert counts() == before


def test_a_customer_can_never_choose_the_node(two_nodes, owner, api_for, client_for):
    local, other = two_nodes
    before = counts()
    response = api_for(owner).post("/api/ves/", {"ostemplate": "tiny", "node": other.name}, format="json")
    assert response.status_code == 403 and "Only admins can choose the node" in response.json()["detail"]
    page = client_for(owner).get("/ves/new/").content.decode()
    assert 'name="node"' not in page
    response = client_for(owner).post("/ves/new/", {"ostemplate": "tiny", "node": local.name, "start": "on"})
    assert response.status_code == 302  # the field is not theirs: ignored, the policy places it
    assert counts() == (before[0] + 1, before[1] + 1)


# --- maintenance -------------------------------------------------------------------------------------------


def test_an_admin_puts_a_node_in_maintenance_and_back_audited_and_shown(two_nodes, admin, client_for, owner):
    from vzpanel.audit.models import AuditEntry
    from vzpanel.ves import services

    local, other = two_nodes
    c = client_for(admin)
    assert "Put in maintenance" in c.get(f"/nodes/{other.name}/").content.decode()
    assert c.get(f"/nodes/{other.name}/maintenance/").status_code == 405  # a change is a POST
    response = c.post(f"/nodes/{other.name}/maintenance/", {"maintenance": "on"})
    assert response.status_code == 302
    other.refresh_from_db()
    assert other.maintenance
    entry = AuditEntry.objects.filter(action="node.maintenance").latest("pk")
    assert entry.user == admin and "maintenance on" in entry.detail
    assert "End maintenance" in c.get(f"/nodes/{other.name}/").content.decode()
    for path in ("/nodes/", "/"):  # the node list and the dashboard say so
        row = c.get(path).content.decode().split(f'data-node="{other.name}"')[1].split("</tr>")[0]
        assert ">maintenance</span>" in row, path
    assert {services.create_ve(owner, ostemplate="tiny").ve.node for _ in range(2)} == {local}
    c.post(f"/nodes/{other.name}/maintenance/", {"maintenance": "off"})
    other.refresh_from_db()
    assert not other.maintenance and AuditEntry.objects.filter(action="node.maintenance").count() == 2


def test_maintenance_refuses_bad_input_and_others(two_nodes, admin, owner, client_for):
    from vzpanel.audit.models import AuditEntry

    _, other = two_nodes
    assert client_for(admin).post(f"/nodes/{other.name}/maintenance/", {"maintenance": "yes"}).status_code == 302
    assert client_for(admin).post("/nodes/node9/maintenance/", {"maintenance": "on"}).status_code == 404
    assert client_for(owner).post(f"/nodes/{other.name}/maintenance/", {"maintenance": "on"}).status_code == 404
    other.refresh_from_db()
    assert not other.maintenance and not AuditEntry.objects.filter(action="node.maintenance").exists()


# --- the Add node page -------------------------------------------------------------------------------------


@pytest.fixture
def joins(settings, tmp_path):
    settings.STATE_DIR = tmp_path
    return tmp_path / "data" / "joins"


def add_form(**kw):
    return {"name": "node3", "description": "rack 2", "redis_host": "192.0.2.10", "redis_port": "6380",
            "tls": "on", "vz_root": "/var/lib/vz", **kw}


def test_adding_a_node_makes_its_credentials_and_prints_the_one_command(admin, node, client_for, joins):
    import hashlib

    from vzpanel.audit.models import AuditEntry
    from vzpanel.nodes.join import agent_acl_line, join_requests
    from vzpanel.nodes.models import Node

    c = client_for(admin)
    assert "Add node" in c.get("/nodes/").content.decode()
    response = c.post("/nodes/add/", add_form())
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = response.content.decode()
    command = re.search(r'<pre[^>]*id="join-command"><code>(.*?)</code>', page, re.S).group(1)
    url = re.search(r"VZPANEL_AGENT_REDIS_URL=&#x27;(\S+?)&#x27;", command).group(1).replace("&amp;", "&")
    assert url.startswith("rediss://agent-node3:") and "@192.0.2.10:6380/0?ssl_ca_certs=" in url
    assert "--node node3" in command and CA_ON_NODE in page
    password = url.split(":")[2].split("@")[0]
    # Only the password's hash is kept: what serve turns into the node's own ACL user on its next start.
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert join_requests(joins) == {"node3": digest} and password not in (joins / "node3").read_text()
    assert "~vz:agent:node3:*" in agent_acl_line("node3", digest)
    added = Node.objects.get(name="node3")
    assert added.description == "rack 2" and not added.maintenance
    assert AuditEntry.objects.filter(action="node.add", user=admin, detail__contains="node3").exists()
    detail = c.get("/nodes/node3/").content.decode()
    assert 'id="node-waiting"' in detail and "waiting to join" in detail
    row = c.get("/nodes/").content.decode().split('data-node="node3"')[1].split("</tr>")[0]
    assert "waiting to join" in row


@pytest.mark.parametrize("field, value, says", [
    ("name", "Node_3", "is not a node name"),
    ("name", "add", "is not a node name"),
    ("name", "templates", "is not a node name"),
    ("name", "-x", "is not a node name"),
    ("redis_host", "a b'; rm -rf /", "Give a host name or an address"),
    ("redis_port", "70000", "less than or equal to 65535"),
    ("vz_root", "relative/path", "Give an absolute path"),
    ("vz_root", "/var/lib/vz'; reboot", "Give an absolute path"),
])
def test_add_node_refuses_bad_input_and_changes_nothing(admin, node, client_for, joins, field, value, says):
    from vzpanel.audit.models import AuditEntry
    from vzpanel.nodes.models import Node

    before = Node.objects.count()
    response = client_for(admin).post("/nodes/add/", add_form(**{field: value}))
    assert response.status_code == 400 and says in response.content.decode()
    assert Node.objects.count() == before and not joins.exists()
    assert not AuditEntry.objects.filter(action="node.add").exists()


def test_add_node_refuses_a_name_taken_or_waiting_and_others_get_nothing(admin, node, owner, client_for, joins):
    from vzpanel.nodes.join import request_join
    from vzpanel.nodes.models import Node

    response = client_for(admin).post("/nodes/add/", add_form(name=node.name))
    assert response.status_code == 400 and "There is already a node" in response.content.decode()
    request_join(joins, "node4")  # a request left behind (its node row since removed by hand)
    response = client_for(admin).post("/nodes/add/", add_form(name="node4"))
    assert response.status_code == 400 and "already waiting to join" in response.content.decode()
    assert not Node.objects.filter(name="node4").exists()  # the row was rolled back
    for method in ("get", "post"):
        assert getattr(client_for(owner), method)("/nodes/add/", add_form(name="node5")).status_code == 404
    assert not Node.objects.filter(name="node5").exists()


def test_join_requests_read_by_root_take_only_hashes_in_regular_files(tmp_path):
    from vzpanel.nodes.join import join_requests, request_join, withdraw_join

    request_join(tmp_path, "node6")
    (tmp_path / "node7").write_text("not a hash\n")
    (tmp_path / "Bad").write_text("a" * 64)
    secret = tmp_path.parent / "root-only"
    secret.write_text("b" * 64)
    (tmp_path / "node8").symlink_to(secret)
    (tmp_path / "node9").mkdir()
    assert list(join_requests(tmp_path)) == ["node6"]
    assert withdraw_join(tmp_path, "node6") and not withdraw_join(tmp_path, "node6")
    assert join_requests(tmp_path / "missing") == {}


# --- template push -----------------------------------------------------------------------------------------


def test_a_node_page_offers_the_templates_it_lacks_and_pushing_one_queues_a_task(two_nodes, admin, client_for):
    from vzpanel.audit.models import AuditEntry
    from vzpanel.nodes.models import Template
    from vzpanel.tasks.models import Task

    local, other = two_nodes
    Template.objects.create(node=local, name="debian-12", built=True)
    c = client_for(admin)
    page = c.get(f"/nodes/{other.name}/").content.decode()
    assert '<option value="debian-12">' in page.split('id="node-push"')[1]
    response = c.post(f"/nodes/{other.name}/push-template/", {"template": "debian-12"})
    task = Task.objects.get(action="template.push")
    assert response.status_code == 302 and response["Location"] == f"/tasks/{task.pk}/"
    assert task.node == other and task.params == {"template": "debian-12"} and task.ve is None
    assert AuditEntry.objects.filter(action="node.template_push", task=task, user=admin).exists()
    response = c.post(f"/nodes/{other.name}/push-template/", {"template": "debian-12"}, follow=True)
    assert "already being pushed" in response.content.decode()
    assert Task.objects.filter(action="template.push").count() == 1


@pytest.mark.parametrize("template, says", [
    ("tiny", "cannot be pushed to node node2 (templates it lacks: none"),  # it has it
    ("windows-95", "cannot be pushed"),
    ("", "cannot be pushed"),
    ("../../etc", "cannot be pushed"),
])
def test_pushing_what_a_node_has_or_nobody_has_is_refused_and_queues_nothing(two_nodes, admin, client_for,
                                                                              template, says):
    from vzpanel.tasks.models import Task

    _, other = two_nodes
    response = client_for(admin).post(f"/nodes/{other.name}/push-template/", {"template": template}, follow=True)
    assert says in response.content.decode() and "nothing was queued" in response.content.decode()
    assert not Task.objects.filter(action="template.push").exists()


def test_course_images_are_never_pushed_and_customers_cannot_push(two_nodes, admin, owner, client_for):
    from vzpanel.nodes.models import Template
    from vzpanel.nodes.push import missing_templates
    from vzpanel.tasks.models import Task

    local, other = two_nodes
    Template.objects.create(node=local, name="mine", visibility="user", owner=owner)
    Template.objects.create(node=local, name="ops-only", visibility="admins")
    assert missing_templates(other) == ["ops-only"]
    assert client_for(owner).post(f"/nodes/{other.name}/push-template/", {"template": "ops-only"}).status_code == 404
    assert not Task.objects.filter(action="template.push").exists()


@pytest.mark.root
def test_a_pushed_template_is_built_by_the_nodes_agent_and_recorded(node_agent, engine_root, admin, node):
    from vzengine import Engine
    from vzpanel.nodes import push
    from vzpanel.nodes.models import Node, Template

    other = Node.objects.create(name=NEW)
    Template.objects.create(node=other, name="tiny", built=True, description="busybox")
    Template.objects.create(node=other, name="no-recipe", built=True)
    Template.objects.filter(node=node, name="tiny").update(built=False)  # the local node lacks it

    task = wait_task(push.push_template(admin, node, "tiny"), timeout=300)
    assert task.status == "completed", (task.error, task.traceback)
    row = Template.objects.get(node=node, name="tiny")
    assert row.built and row.description == "busybox"
    assert "tiny" in {t.name for t in Engine(engine_root).templates.list() if t.cached}

    task = wait_task(push.push_template(admin, node, "no-recipe"))
    assert task.status == "failed" and "no recipe in the engine's template store" in task.error
    assert not Template.objects.filter(node=node, name="no-recipe").exists()


def test_add_node_says_so_when_its_credentials_cannot_be_kept_and_changes_nothing(admin, node, client_for, joins):
    from vzpanel.nodes.models import Node

    joins.parent.mkdir(parents=True)
    joins.write_text("a file where the directory should be")
    response = client_for(admin).post("/nodes/add/", add_form())
    assert response.status_code == 400 and "cannot be kept in" in response.content.decode()
    assert not Node.objects.filter(name="node3").exists()
