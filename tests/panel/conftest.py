"""Panel fixtures: a private state dir and Redis, a file test database, and the personas.

Personas: an admin; an owner (customer with a plan and a VE); an outsider (another customer, who must
get nothing about the owner's VE); a teacher, whose student owns a VE.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery-9"


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process this test run started, by its pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def panel_state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vzpanel")


@pytest.fixture(scope="session")
def redis_url(panel_state):
    """A private redis-server on a unix socket, stopped by pid at the end."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    sock = panel_state / "redis.sock"
    proc = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(panel_state),
         "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock))

        def up():
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_for(up, 10, "redis-server")
        yield f"unix://{sock}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session", autouse=True)
def _panel_settings(redis_url, panel_state):
    """Point the panel at the private Redis and state dir for every panel test."""
    from channels.layers import channel_layers
    from django.conf import settings

    settings.STATE_DIR = panel_state
    settings.REDIS_URL = redis_url
    from vzpanel.settings import channel_layers as layers_for

    settings.CHANNEL_LAYERS = layers_for(redis_url)
    settings.RQ_QUEUES = {f"node:{settings.VZPANEL_NODE}": {"URL": redis_url}}
    settings.ALLOWED_HOSTS = ["*"]
    channel_layers.backends = {}


@pytest.fixture(scope="session")
def test_db_path(panel_state) -> Path:
    return panel_state / "test.sqlite3"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(test_db_path):
    """A file test database, so the node agent and web server processes can share it."""
    from django.db import connections

    connections["default"].settings_dict["TEST"]["NAME"] = str(test_db_path)


@pytest.fixture(autouse=True)
def _clean_redis(redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushall()


def panel_env(redis_url, panel_state, test_db_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="vzpanel.settings",
        VZPANEL_STATE=str(panel_state),
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{test_db_path}",
        VZPANEL_SECRET_KEY="test-secret-key-for-the-panel-tests-only",
        VZPANEL_2FA_REQUIRED_ROLES="",  # test_signin.py covers enforced two-factor sign-in
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def engine_root(request):
    """The private engine root (tests/conftest.py's vz_root), or skip if the engine cannot run here."""
    try:
        import vzengine  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"vzengine is not importable yet: {exc}")
    return request.getfixturevalue("vz_root")


def start_agent(redis_url, panel_state, test_db_path, **env):
    """Start a real node: the task worker (`manage.py rqworker node:<name>`, on the private Redis and the test
    database) and the node agent (`python -m vzpanel.agent`, root, Redis only). Return the worker's process,
    with the agent's as its ``agent`` attribute."""
    from django.conf import settings

    log = open(panel_state / "agent.log", "ab")  # noqa: SIM115 - closed by stop_agent
    environ = panel_env(redis_url, panel_state, test_db_path, **env)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "rqworker", f"node:{settings.VZPANEL_NODE}"],
        cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT,
    )
    proc.agent = subprocess.Popen(
        [sys.executable, "-m", "vzpanel.agent", "--node", settings.VZPANEL_NODE, "--threads", "6"],
        cwd=REPO, env={k: v for k, v in environ.items() if k not in ("DATABASE_URL",)}, stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_file = log
    return proc


def stop_agent(proc):
    stop_process(proc, timeout=30)
    stop_process(proc.agent, timeout=30)
    proc.log_file.close()


@pytest.fixture
def root_agent(redis_url, panel_state, engine_root):
    """Only the node agent (the door to root), for panel code a test runs in-process (reconcile, tick)."""
    from django.conf import settings

    log = open(panel_state / "root-agent.log", "ab")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "DATABASE_URL"}
    env.update(REDIS_URL=redis_url, VZ_ROOT=str(engine_root), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "vzpanel.agent", "--node", settings.VZPANEL_NODE], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    yield proc
    stop_process(proc, timeout=30)
    log.close()


def remove_ves_made_since(root, before: set) -> None:
    """Destroy the VEs of engine root that are not in ``before``, and the course images made meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from vzengine import Engine

    engine = Engine(root)

    def remove(ctid):
        eng = Engine(root, lock_wait=30)
        if eng.is_running(ctid):
            eng.stop(ctid, fast=True)  # no clean shutdown to wait for: it is going
        eng.destroy(ctid)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(remove, set(engine.ctids()) - before))
    for t in engine.templates.list():
        if t.name.startswith("course"):
            engine.templates.remove(t.name)


@pytest.fixture
def clean_engine(engine):
    """Destroy every VE and course image this test leaves on the engine root, even when it fails (the panel
    numbers VEs from 101 in every test's fresh database, so a VE left behind would take the next test's id)."""
    before = set(engine.ctids())
    yield engine
    remove_ves_made_since(engine.layout.root, before)


@pytest.fixture
def plain_agent(redis_url, panel_state, test_db_path, transactional_db):
    """A node agent with no engine root: for jobs that must never reach the engine."""
    proc = start_agent(redis_url, panel_state, test_db_path, VZ_ROOT=str(panel_state / "no-engine-here"))
    yield proc
    stop_agent(proc)


@pytest.fixture
def node_agent(redis_url, panel_state, test_db_path, transactional_db, engine_root):
    """A node agent driving the private engine root; the VEs the test made through it go afterwards."""
    from vzengine import Engine

    before = set(Engine(engine_root).ctids())
    proc = start_agent(redis_url, panel_state, test_db_path, VZ_ROOT=str(engine_root))
    yield proc
    stop_agent(proc)
    remove_ves_made_since(engine_root, before)


def wait_task(task, timeout=120):
    """Wait until task has finished; return it fresh from the database."""

    def finished():
        task.refresh_from_db()
        return task.status in ("completed", "failed", "errored", "cancelled")

    wait_for(finished, timeout, f"task {task.pk} ({task.action}) to finish", interval=0.2)
    return task


# --- personas ---------------------------------------------------------------------------------------


@pytest.fixture
def node(db):
    from vzpanel.nodes.models import Node, Template

    node = Node.local()
    Template.objects.get_or_create(node=node, name="tiny", defaults={"description": "busybox", "built": True})
    return node


@pytest.fixture
def plan(db):
    from vzpanel.plans.models import Plan

    return Plan.objects.create(name="small", ram_mb=256, swap_mb=0, cpus=1, disk_gb=2, nproc=128, max_ves=2)


def make_user(username, role, plan=None, teacher=None):
    from vzpanel.accounts.models import User

    user = User.objects.create_user(username, f"{username}@example.test", PASSWORD, role=role, plan=plan,
                                    teacher=teacher)
    return user


@pytest.fixture
def admin(db):
    from vzpanel.accounts.models import User

    return make_user("alice-admin", User.Role.ADMIN)


@pytest.fixture
def owner(plan):
    return make_user("oscar-owner", "customer", plan=plan)


@pytest.fixture
def outsider(plan):
    return make_user("olga-outsider", "customer", plan=plan)


@pytest.fixture
def teacher(db):
    return make_user("tom-teacher", "teacher")


@pytest.fixture
def student(plan, teacher):
    return make_user("sue-student", "student", plan=plan, teacher=teacher)


def make_ve(owner, node, ctid, status="running", hostname=None):
    from vzpanel.ves.models import VE

    return VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=hostname or f"ve{ctid}",
                             ostemplate="tiny", status=status, ip_addresses=[f"10.0.{ctid // 256}.{ctid % 256}"])


@pytest.fixture
def owner_ve(owner, node):
    return make_ve(owner, node, 101)


@pytest.fixture
def student_ve(student, node):
    return make_ve(student, node, 201, status="stopped")


@pytest.fixture
def client_for(client):
    """Return a logged-in test client for a persona."""
    from django.test import Client

    def make(user):
        c = Client()
        c.force_login(user)
        return c

    return make


@pytest.fixture
def api_for(db):
    """Return an API client authenticated with a fresh token of a persona."""
    from rest_framework.test import APIClient

    from vzpanel.accounts.models import APIToken

    def make(user):
        _, key = APIToken.issue(user, "tests")
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return c

    return make


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daphne(redis_url, panel_state, test_db_path, log_name, **env):
    """Start the panel's ASGI server (daphne) on a free localhost port; return (process, base URL)."""
    import socket

    port = free_port()
    log = open(panel_state / log_name, "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "vzpanel.asgi:application"],
        cwd=REPO, env=panel_env(redis_url, panel_state, test_db_path, **env), stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log

    def listening():
        assert proc.poll() is None, f"daphne exited; see {panel_state / log_name}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, 30, "daphne to listen")
    except BaseException:
        stop_process(proc)
        log.close()
        raise
    return proc, f"http://127.0.0.1:{port}"



@pytest.fixture
def live_panel(redis_url, panel_state, test_db_path, transactional_db):
    """The panel's real ASGI server (daphne) on a free 127.0.0.1 port; yields its base URL."""
    proc, base = start_daphne(redis_url, panel_state, test_db_path, "web.log")
    yield base
    stop_process(proc)
    proc.log_file.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser(monkeypatch):
    """Headless Debian Chromium driven by Playwright; closed at the end."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
