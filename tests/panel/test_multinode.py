"""Two nodes from one panel, for real: the panel (`manage.py serve` on PostgreSQL) with its own node, and
node-2 in a network namespace of the test's own (tests/twonode.py) with its own engine root, address pool
and agent, joined with `manage.py node add`, reaching the panel's Redis (TLS, its own ACL user) and
PostgreSQL only over the namespace's link.

One namespace, one panel and one VE per node serve the whole module (the tests run in file order: the node
going down and coming back, and its removal being refused, come last). This process plays the web process:
it reads and writes the panel's PostgreSQL database and talks to the panel's Redis as the `panel` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import free_test_net
from tests.panel.conftest import PASSWORD, REPO, free_port, remove_ves_made_since, wait_for, wait_task
from tests.panel.hosting_helpers import PING
from tests.panel.test_privilege_split import WEB_USER, state_top
from tests.panel.test_run_command import Output
from tests.postgres import bindir, private_postgres
from tests.twonode import NodeNamespace, make_node
from vzpanel.agent import protocol
from vzpanel.nodes.join import CA_ON_NODE

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(bindir() is None, reason="PostgreSQL is not installed (scripts/setup --test)")]

NODE2 = "node-2"
LOCAL = "local"
RECONCILE_EVERY = 15  # serve's periodic reconcile of every node (node-2's first one fails: its agent starts after)


# --- the panel --------------------------------------------------------------------------------------


@dataclass
class Serve:
    """`manage.py serve` on PostgreSQL, driving the session's engine root as its own node."""

    state: Path
    env: dict
    proc: subprocess.Popen | None = None
    outputs: list = field(default_factory=list)

    def start(self, **extra) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "serve", "--port", str(free_port()), "--http-port", "0"],
            cwd=REPO, env={**self.env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        out = Output(self.proc)
        self.outputs.append(out)
        deadline = time.monotonic() + 180
        while True:
            try:
                out.wait_for(r"vzpanel: up at http", timeout=2)
                return
            except AssertionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group we started, by its pid
                proc.wait()

    def manage(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=120)

    @property
    def redis_url(self) -> str:
        password = (self.state / "secrets" / "redis-panel").read_text().strip()
        return f"unix://panel:{password}@{self.state / 'run' / 'redis' / 'redis.sock'}"


@dataclass
class TwoNodes:
    serve: Serve
    node: NodeNamespace
    node_url: str  # node-2's own Redis URL (TLS, its ACL user), as `node add` printed it
    redis_port: int
    pg_host: str
    pg_port: int
    agent: subprocess.Popen | None = None
    logs: Path | None = None

    def start_agent(self) -> subprocess.Popen:
        """node-2's agent, in its namespace, with its own credentials only."""
        self.agent = self.node.start([sys.executable, "-m", "vzpanel.agent", "--node", NODE2, "--threads", "4"],
                                     self.logs / "agent-node-2.log", VZPANEL_AGENT_REDIS_URL=self.node_url)
        return self.agent


@pytest.fixture(scope="module")
def two_nodes(vz_root, tmp_path_factory):
    """The panel with its own node (the session's engine root) and node-2 joined, agent running; all of it
    (VEs of both nodes, processes, namespace, link, roots, PostgreSQL) removed at the end."""
    from vzengine import Engine

    logs = tmp_path_factory.mktemp("twonode")
    before = set(Engine(vz_root).ctids())
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(make_node(NODE2, free_test_net(), free_test_net(), logs))
        url, _ = stack.enter_context(private_postgres(host=ns.host_addr))
        stack.callback(remove_ves_made_since, vz_root, before)
        top = state_top()
        stack.callback(shutil.rmtree, top, True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "VZPANEL_AGENT_REDIS_URL", "VZPANEL_SECRET_KEY", "VZPANEL_ADMIN_USER",
                            "VZPANEL_ADMIN_PASSWORD") and not k.startswith("PYTEST_")}
        env.update(VZPANEL_STATE=str(top / "state"), VZ_ROOT=str(vz_root), DATABASE_URL=url, VZPANEL_NODE=LOCAL,
                   VZPANEL_2FA_REQUIRED_ROLES="", VZPANEL_RECONCILE_INTERVAL=str(RECONCILE_EVERY),
                   VZPANEL_METRICS_INTERVAL="3600", VZPANEL_WORKERS="2", PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="vzpanel.settings")
        serve = Serve(top / "state", env)
        stack.callback(serve.stop)
        # `node add` needs the panel's database, root's secrets directory and the web user: a serve run
        # makes all three; when the web user exists already, a migrate and the directory will do (faster).
        try:
            pwd.getpwnam(WEB_USER)
            (serve.state / "secrets").mkdir(mode=0o750, parents=True)
            migrated = serve.manage("migrate", "--no-input")
            assert migrated.returncode == 0, migrated.stderr[-2000:]
        except KeyError:
            serve.start()
            serve.stop()
        port = free_port()
        added = serve.manage("node", "add", NODE2, "--redis-host", ns.host_addr, "--redis-port", str(port),
                             "--vz-root", str(ns.root))
        assert added.returncode == 0, added.stderr
        node_url = re.search(r"VZPANEL_AGENT_REDIS_URL='([^']+)'", added.stdout).group(1)
        node_url = node_url.replace(CA_ON_NODE, str(serve.state / "redis-tls" / "cert.pem"))
        serve.start(VZPANEL_REDIS_LISTEN=f"{ns.host_addr}:{port}")
        pg = re.match(r"postgresql://[^@]+@([^:/]+):(\d+)/", url)
        nodes = TwoNodes(serve, ns, node_url, port, pg.group(1), int(pg.group(2)), logs=logs)
        nodes.start_agent()
        # No worker or reconcile of the test's own: serve's task workers serve node-2's queue too, and its
        # periodic rounds (every RECONCILE_INTERVAL seconds) reconcile node-2 as well as its own node.
        yield nodes


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def drop_connection() -> None:
    from django.db import connections

    with contextlib.suppress(Exception):
        connections["default"].close()
    with contextlib.suppress(AttributeError):
        del connections["default"]


def in_consumer_thread(fn) -> None:
    """Run fn in the thread where consumers' database_sync_to_async calls run when a test drives them with
    asyncio.run (asgiref's single thread): its database connection outlives the test that opened it."""
    from asgiref.sync import SyncToAsync

    SyncToAsync.single_thread_executor.submit(fn).result()


@pytest.fixture(scope="module")
def panel(two_nodes, django_db_blocker):
    """This process as the panel's web process: its PostgreSQL database and its Redis (the `panel` user)."""
    from channels.layers import channel_layers
    from django.conf import settings
    from django.db import connections

    from vzpanel.lib import dburl
    from vzpanel.settings import channel_layers as layers_for

    saved = {k: getattr(settings, k) for k in ("REDIS_URL", "CHANNEL_LAYERS", "RQ_QUEUES", "STATE_DIR")}
    url = two_nodes.serve.env["DATABASE_URL"]
    connections["default"].close()
    old_databases = connections.settings
    connections.settings = connections.configure_settings({"default": dburl.parse(url)})
    del connections["default"]
    redis_url = two_nodes.serve.redis_url
    settings.REDIS_URL = redis_url
    settings.CHANNEL_LAYERS = layers_for(redis_url)
    settings.RQ_QUEUES = {f"node:{n}": {"URL": redis_url} for n in (LOCAL, NODE2)}
    settings.STATE_DIR = two_nodes.serve.state
    channel_layers.backends = {}
    in_consumer_thread(drop_connection)  # an earlier test's consumers left theirs open there, on SQLite
    try:
        with django_db_blocker.unblock():
            yield two_nodes
            connections["default"].close()
    finally:
        in_consumer_thread(drop_connection)
        with contextlib.suppress(AttributeError):  # no connection made in this context
            del connections["default"]
        connections.settings = old_databases
        for k, v in saved.items():
            setattr(settings, k, v)
        channel_layers.backends = {}


@pytest.fixture(scope="module")
def people(panel, net):
    """An admin and a customer whose plan gives one IPv4 address per VE; each node's own IPv4 pool (a part of
    its engine's IP_POOL), and the local node's templates as its reconcile reports them."""
    from vzpanel.accounts.models import User
    from vzpanel.nodes.models import IPPool, Node, Template
    from vzpanel.plans.models import Plan

    plan = Plan.objects.create(name="two-nodes", ram_mb=256, swap_mb=0, cpus=1, disk_gb=2, nproc=128, max_ves=4,
                               ipv4_addresses=1, ipv6_addresses=0)
    admin = User.objects.create_user("ada-admin", "ada@example.test", PASSWORD, role=User.Role.ADMIN)
    owner = User.objects.create_user("olly-owner", "olly@example.test", PASSWORD, role="customer", plan=plan)
    local = Node.local()
    IPPool.objects.create(node=local, name="local-v4", network=str(_part(net.pool)), kind="public")
    node2 = Node.objects.get(name=NODE2)
    IPPool.objects.create(node=node2, name="node-2-v4", network=str(_part(panel.node.pool)), kind="public")
    wait_for(lambda: Template.objects.filter(node=local, name="tiny").exists(), 120,
             "serve's periodic reconcile to report the local node's templates")
    return {"admin": admin, "owner": owner, "plan": plan}


def _part(pool: str) -> ipaddress.IPv4Network:
    """A /28 of an engine's /24 pool, away from the addresses other tests of the session use first."""
    return list(ipaddress.ip_network(pool).subnets(new_prefix=28))[12]


def client_for(user):
    from django.test import Client

    c = Client()
    c.force_login(user)
    return c


def api_client_for(user):
    from rest_framework.test import APIClient

    from vzpanel.accounts.models import APIToken

    _, key = APIToken.issue(user, "two nodes")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return c


def node2_engine_ctids(node: NodeNamespace) -> list[int]:
    return node.python("from vzengine import Engine; import os, json; "
                       "print(json.dumps(Engine(os.environ['VZ_ROOT']).ctids()))")


def running_on_node2(node: NodeNamespace, ctid: int) -> bool:
    return node.python("from vzengine import Engine; import os, json; "
                       f"print(json.dumps(Engine(os.environ['VZ_ROOT']).is_running({ctid})))")


def agent_peers(node: NodeNamespace, pid: int) -> set[str]:
    """Where process pid's TCP connections in the node's namespace go (psutil reads the host's tables)."""
    out = node.net(["ss", "-Htnp"]).stdout
    return {line.split()[4] for line in out.splitlines() if f"pid={pid}," in line}


def pings(argv_prefix: list[str], address: str) -> bool:
    """Whether address answers one ICMP echo (the host has no ping), sent from argv_prefix's namespace."""
    proc = subprocess.run([*argv_prefix, sys.executable, "-c", PING, address], capture_output=True, text=True)
    return proc.returncode == 0


# --- joining ------------------------------------------------------------------------------------------


def test_a_joined_node_registers_itself_and_reports_its_templates_and_capacity(panel, people):
    import psutil

    from vzpanel.nodes.models import Node, Template
    from vzpanel.nodes.status import node_statuses, nodes_up

    node = panel.node
    wait_for(lambda: NODE2 in nodes_up([NODE2]), 60, "node-2's agent to say it is alive")
    # Its agent talks to the panel over the link only: TLS to the Redis listener on the host's end.
    peers = agent_peers(node, panel.agent.pid)
    assert peers and peers == {f"{node.host_addr}:{panel.redis_port}"}, peers
    assert "DATABASE_URL" not in psutil.Process(panel.agent.pid).environ()
    # and the panel's PostgreSQL answers the node on the link (nothing else of the host is routed to it).
    ready = node.net([str(bindir() / "pg_isready"), "-h", panel.pg_host, "-p", str(panel.pg_port)], check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr

    # serve's periodic reconcile reaches node-2 too (the test reconciles nothing itself)
    wait_for(lambda: Node.objects.get(name=NODE2).last_seen_at is not None, 4 * RECONCILE_EVERY + 60,
             "serve's periodic reconcile to reach node-2")
    node2 = Node.objects.get(name=NODE2)
    assert not node2.ves.exists()  # nothing adopted: node-2's engine root is its own
    assert node2.cpus == os.cpu_count() and node2.ram_mb > 0  # its capacity, as its agent reported it
    assert Template.objects.filter(node=node2, name="tiny").exists()
    st = next(s for s in node_statuses() if s.name == NODE2)
    assert st.up and st.pool and st.pool["set_up"] and st.pool["size_bytes"] > 0 and st.pool["free_bytes"] > 0
    assert st.addresses_size > 0 and st.addresses_used == 0  # its own address pool

    page = client_for(people["admin"]).get(f"/nodes/{NODE2}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert _state(text, "node-state") == "up"
    assert "tiny" in text and str(_part(node.pool)) in text and "no report yet" not in text  # its disk pool
    listing = client_for(people["admin"]).get("/nodes/").content.decode()
    assert NODE2 in listing and LOCAL in listing


# --- placement ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def placed(panel, people):
    """Two VEs of the customer made through the panel's create, the placement policy choosing their nodes."""
    from vzpanel.nodes.models import Template
    from vzpanel.ves.services import create_ve

    wait_for(lambda: Template.objects.filter(node__name=NODE2, name="tiny").exists(), 4 * RECONCILE_EVERY + 60,
             "serve's periodic reconcile to report node-2's templates")
    ves = []
    for i in range(2):
        task = wait_task(create_ve(people["owner"], ostemplate="tiny", hostname=f"multi{i}"), timeout=300)
        assert task.status == "completed", f"{task.status}: {task.error} {task.traceback[-1500:]}"
        task.ve.refresh_from_db()
        ves.append(task.ve)
    return {ve.node.name: ve for ve in ves}


def test_new_ves_are_placed_on_both_nodes_and_each_runs_on_its_own_node(panel, placed, vz_root):
    from vzengine import Engine

    assert set(placed) == {LOCAL, NODE2}, {name: ve.ctid for name, ve in placed.items()}
    local_ve, far_ve = placed[LOCAL], placed[NODE2]
    for ve in (local_ve, far_ve):
        assert ve.status == "running" and len(ve.ip_addresses) == 1
        assert ipaddress.ip_address(ve.ip_addresses[0]) in ipaddress.ip_network(ve.node.ip_pools.get().network)

    # Each VE is on its own node's engine root and nowhere else.
    local_engine = Engine(vz_root)
    assert local_engine.is_running(local_ve.ctid) and not local_engine.exists(far_ve.ctid)
    assert far_ve.ctid in node2_engine_ctids(panel.node) and local_ve.ctid not in node2_engine_ctids(panel.node)
    assert running_on_node2(panel.node, far_ve.ctid)

    # Each answers on its address from its own node; node-2's VE network is node-2's, not the host's.
    far_net = ["nsenter", f"--net=/run/netns/{panel.node.netns}"]
    wait_for(lambda: pings(far_net, far_ve.ip_addresses[0]), 30, "node-2's VE to answer ping on node-2")
    wait_for(lambda: pings([], local_ve.ip_addresses[0]), 30, "the local VE to answer ping on the host")
    assert not pings([], far_ve.ip_addresses[0])

    # The owner sees both in one list.
    page = client_for(local_ve.owner).get("/ves/").content.decode()
    assert "multi0" in page and "multi1" in page


# --- console ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node2_console(panel):
    """node-2's console daemon, in its namespace, on its own Redis credentials (the channel layer)."""
    from vzpanel.console import client

    proc = panel.node.start([sys.executable, str(REPO / "manage.py"), "consoled", "--node", NODE2],
                            panel.logs / "consoled-node-2.log", REDIS_URL=panel.node_url,
                            VZPANEL_SECRET_KEY="test-secret-key-for-the-panel-tests-only")

    def answers():
        assert proc.poll() is None, "consoled on node-2 exited; see consoled-node-2.log"
        return client.ping(NODE2, timeout=0.5)

    try:
        wait_for(answers, 60, "node-2's console daemon")
        yield proc
    finally:
        panel.node.stop(proc)


def test_a_console_to_a_ve_on_node_2_reaches_that_ve(panel, placed, node2_console):
    from tests.panel.test_console import Term
    from vzpanel.console import client

    ve = placed[NODE2]
    owner = ve.owner  # read here: the ORM is not for the event loop

    async def go():
        t = Term(owner, ve.ctid)
        opened = await t.open()
        assert opened["role"] == "writer"
        await t.see("# ")
        await t.type("uname -n | tr a-z A-Z\r")  # upper case: not what the prompt or the echo shows
        await t.see(ve.hostname.upper())
        await t.disconnect()

    try:
        asyncio.run(go())
    finally:
        client.close_ve(NODE2, ve.ctid)


# --- node-2's credentials ----------------------------------------------------------------------------------


def test_node_2_credentials_are_refused_on_the_local_node_queue(panel):
    from rq import Queue

    mine = redis.Redis.from_url(panel.node_url, socket_timeout=10)
    theirs = redis.Redis.from_url(panel.serve.redis_url)
    local_requests = protocol.requests_key(LOCAL)
    rq_local = Queue(f"node:{LOCAL}", connection=theirs)
    # A well-formed request: had it reached the local agent, its answer would be on the reply list below.
    request_id, forged = protocol.encode_request("status", {"ctid": 101}, sender="node-2")
    for attack in (lambda: mine.lpush(local_requests, forged), lambda: mine.rpush(local_requests, forged),
                   lambda: mine.lrange(local_requests, 0, -1), lambda: mine.blpop([local_requests], timeout=1),
                   lambda: mine.lpush(rq_local.key, "forged-job"), lambda: mine.lrange(rq_local.key, 0, -1),
                   lambda: mine.set(protocol.alive_key(LOCAL), "1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attack()
    time.sleep(2)  # the local agent takes requests within a second (BLPOP timeout 1)
    assert not theirs.exists(protocol.reply_key(LOCAL, request_id))  # nothing reached the local agent
    # (serve's own rounds queue jobs and requests meanwhile: look for the forged ones, not at the lengths)
    assert forged not in theirs.lrange(local_requests, 0, -1)
    assert b"forged-job" not in theirs.lrange(rq_local.key, 0, -1)
    # Its own keys it does reach (the same connection, so the refusals above are the ACL's, not TLS's).
    probe = protocol.requests_key(NODE2) + ":probe"
    assert mine.lpush(probe, "x") == 1 and mine.delete(probe) == 1


# --- a node going down and coming back ---------------------------------------------------------------------


def test_a_node_whose_agent_dies_is_shown_down_with_its_ves_unknown_and_is_right_again_once_back(panel, placed,
                                                                                                     people):
    from vzpanel.nodes.models import Node
    from vzpanel.nodes.status import node_statuses, nodes_up
    from vzpanel.tasks.models import Task

    far_ve, local_ve = placed[NODE2], placed[LOCAL]
    admin = client_for(people["admin"])
    panel.node.stop(panel.agent, kill=True)  # the node dies: no goodbye, its alive key just expires
    wait_for(lambda: NODE2 not in nodes_up([NODE2]), 60, "node-2 to be shown down")
    st = {s.name: s for s in node_statuses()}
    assert st[NODE2].state == "down" and st[LOCAL].state == "up"
    detail = admin.get(f"/nodes/{NODE2}/").content.decode()
    assert _state(detail, "node-state") == "down" and _ve_state(detail, far_ve.ctid) == "unknown"
    here = admin.get(f"/nodes/{LOCAL}/").content.decode()
    assert _state(here, "node-state") == "up" and _ve_state(here, local_ve.ctid) == "running"
    mine = client_for(people["owner"]).get("/").content.decode()  # the owner's dashboard says the same
    assert _ve_state(mine, far_ve.ctid) == "unknown" and _ve_state(mine, local_ve.ctid) == "running"
    # So do the owner's VE list, the VE's page and the API, saying why; the stored state stays as it was.
    owner = client_for(people["owner"])
    listing = owner.get("/ves/").content.decode()
    assert _ve_state(listing, far_ve.ctid) == "unknown" and _ve_state(listing, local_ve.ctid) == "running"
    assert f"node {NODE2} is down (no answer since" in listing
    page = owner.get(f"/ves/{far_ve.ctid}/").content.decode()
    assert 'id="ve-state">unknown<' in page and 'id="ve-node-down"' in page and "(last known: running)" in page
    assert 'id="ve-state">running<' in owner.get(f"/ves/{local_ve.ctid}/").content.decode()
    api = api_client_for(people["owner"])
    shown = api.get(f"/api/ves/{far_ve.ctid}/").json()
    assert (shown["status"], shown["stored_status"]) == ("unknown", "running")
    assert f"node {NODE2} is down" in shown["status_why"]
    assert api.get(f"/api/ves/{local_ve.ctid}/").json()["status"] == "running"
    # An action is refused in words, not queued for a node that cannot run it (page, API and bulk alike).
    tasks_before = set(Task.objects.values_list("pk", flat=True))
    refused = owner.post(f"/ves/{far_ve.ctid}/stop/", follow=True).content.decode()
    assert f"VE {far_ve.ctid} is on node {NODE2}, which is down" in refused and "nothing was queued" in refused
    answer = api.post(f"/api/ves/{far_ve.ctid}/restart/")
    assert answer.status_code == 409 and "which is down" in answer.json()["detail"], answer.content
    admin.post("/ves/bulk/", {"ctids": str(far_ve.ctid), "action": "stop"})
    assert set(Task.objects.values_list("pk", flat=True)) == tasks_before
    far_ve.refresh_from_db()
    assert far_ve.status == "running"  # the panel changed nothing it cannot know
    assert running_on_node2(panel.node, far_ve.ctid)  # and the VE itself never stopped

    seen_before = Node.objects.get(name=NODE2).last_seen_at
    panel.start_agent()
    wait_for(lambda: NODE2 in nodes_up([NODE2]), 60, "node-2 to be shown up again")
    # serve's next periodic reconcile reaches it again, and finds what the panel had
    wait_for(lambda: Node.objects.get(name=NODE2).last_seen_at > seen_before, 4 * RECONCILE_EVERY + 60,
             "serve's periodic reconcile to reach node-2 again")
    far_ve.refresh_from_db()
    assert far_ve.status == "running" and Node.objects.get(name=NODE2).ves.count() == 1
    assert api.get(f"/api/ves/{far_ve.ctid}/").json()["status"] == "running"
    assert _ve_state(owner.get("/ves/").content.decode(), far_ve.ctid) == "running"
    detail = admin.get(f"/nodes/{NODE2}/").content.decode()
    assert _state(detail, "node-state") == "up" and _ve_state(detail, far_ve.ctid) == "running"
    assert _ve_state(client_for(people["owner"]).get("/").content.decode(), far_ve.ctid) == "running"


def _state(page: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}" data-state="([^"]+)"', page).group(1)


def _ve_state(page: str, ctid: int) -> str:
    """The state a node page shows for VE ctid."""
    return re.search(rf'data-ctid="{ctid}" data-state="([^"]+)"', page).group(1)


# --- removal --------------------------------------------------------------------------------------------


def test_removing_node_2_is_refused_while_it_holds_ves_and_changes_nothing(panel, placed):
    from vzpanel.nodes.models import Node

    secret = panel.serve.state / "secrets" / f"redis-agent-{NODE2}"
    refused = panel.serve.manage("node", "remove", NODE2)
    assert refused.returncode != 0 and "still holds 1 VE(s)" in refused.stderr, refused.stderr
    assert Node.objects.filter(name=NODE2).exists() and placed[NODE2].node.ves.count() == 1
    assert secret.is_file()
    assert redis.Redis.from_url(panel.node_url, socket_timeout=10).ping()  # its agent still gets in


# --- serve's workers follow the node list ------------------------------------------------------------------


def test_serve_workers_take_the_jobs_of_a_node_added_while_they_run(panel, people):
    from rq import Queue
    from rq.job import Job

    from vzpanel.nodes.models import Node
    from vzpanel.tasks.nodeworker import RESCAN

    theirs = redis.Redis.from_url(panel.serve.redis_url)
    node3 = Node.objects.create(name="node-3")
    try:
        job = Queue("node:node-3", connection=theirs).enqueue("vzpanel.tasks.periodic.job_id", "probe", "x",
                                                              "node-3", result_ttl=120)

        def finished():
            status = Job.fetch(job.id, connection=theirs).get_status(refresh=True)
            assert status in ("queued", "started", "finished"), status
            return status == "finished"

        wait_for(finished, 6 * RESCAN + 30, "serve's workers to take a job of node-3, added while they run")
        assert Job.fetch(job.id, connection=theirs).return_value() == "periodic-probe-x-node-3"
    finally:
        node3.delete()
        Queue("node:node-3", connection=theirs).delete(delete_jobs=True)


# --- a class spread over both nodes -------------------------------------------------------------------------


def test_a_class_spread_over_both_nodes_gets_a_ve_on_each_and_a_class_action_reaches_both(panel, people, placed,
                                                                                          vz_root):
    from vzengine import Engine
    from vzpanel.accounts.models import User
    from vzpanel.classroom import services as classes
    from vzpanel.ves.errors import InvalidRequest

    teacher = User.objects.create_user("tess-teacher", "tess@example.test", PASSWORD, role=User.Role.TEACHER)
    # A golden image frozen from a VE lives on one node: a spread course refuses it, and nothing is made.
    with pytest.raises(InvalidRequest, match="spread over several nodes takes an OS template"):
        classes.create_course(teacher, name="Spread image", image_ve=placed[LOCAL], plan=people["plan"],
                              spread=True)
    course = classes.create_course(teacher, name="Spread", ostemplate="tiny", plan=people["plan"], spread=True,
                                   ssh_access=False)
    assert course.node is None
    for i in range(2):
        classes.add_student(teacher, course, name=f"Student {i}", login=f"spread{i}@example.test")

    parent = wait_task(classes.provision(teacher, course), timeout=300)
    assert parent.status == "completed", (parent.error, [(c.status, c.error) for c in parent.children.all()])
    ves = {m.ve.node.name: m.ve for m in course.students().select_related("ve__node")}
    assert set(ves) == {LOCAL, NODE2}, ves  # the placement policy put one student on each node
    # Each student's task was filed on its VE's node and ran there: each VE runs on its own node only.
    assert {c.ve_id: c.node.name for c in parent.children.all()} == {ve.pk: name for name, ve in ves.items()}
    local_engine = Engine(vz_root)
    assert local_engine.is_running(ves[LOCAL].ctid) and not local_engine.exists(ves[NODE2].ctid)
    assert running_on_node2(panel.node, ves[NODE2].ctid)

    # A class-wide action reaches both nodes.
    task, skipped = classes.class_action(teacher, course, "stop")
    assert not skipped
    task = wait_task(task, timeout=180)
    assert task.status == "completed", (task.error, [(c.status, c.error) for c in task.children.all()])
    assert {c.node.name for c in task.children.all()} == {LOCAL, NODE2}
    assert not local_engine.is_running(ves[LOCAL].ctid) and not running_on_node2(panel.node, ves[NODE2].ctid)
    for ve in ves.values():
        ve.refresh_from_db()
        assert ve.status == "stopped"
