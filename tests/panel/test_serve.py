"""The run command: one `manage.py serve` starts Redis, the web server (unprivileged) and the node agent,
creates the admin once, and stops all of them on SIGTERM."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.panel.conftest import REPO, free_port

pytestmark = pytest.mark.root


def web_user_can_run_python() -> str | None:
    """Return why the web user cannot run this interpreter and the code, or None if it can."""
    try:
        user = pwd.getpwnam(os.environ.get("VZPANEL_WEB_USER", "vzpanel"))
    except KeyError:
        return None  # serve creates it; the probe inside serve then decides
    try:
        probe = subprocess.run([sys.executable, "-c", "import django, daphne, vzpanel"], cwd=REPO,
                               user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True)
    except OSError as exc:
        return str(exc)
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1]


@pytest.fixture
def state_dir():
    # Under /var/tmp, not pytest's 0700 tmp: the web user must reach its state directory.
    path = Path(tempfile.mkdtemp(prefix="vzpanel-serve-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def serve(state_dir, port, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update(VZPANEL_STATE=str(state_dir), VZPANEL_ADMIN_USER="root-admin",
                   VZPANEL_ADMIN_PASSWORD="Serve-test-pass-1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, str(REPO / "manage.py"), "serve", "--port", str(port)], cwd=REPO,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc, pattern, timeout=60) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no {pattern!r} in serve's output:\n{''.join(seen)}")


def test_it_serves_the_panel_and_stops_everything(state_dir):
    if reason := web_user_can_run_python():
        pytest.skip(f"the web user cannot run this Python ({reason}); see vzpanel/NOTES.md")
    port = free_port()
    proc = serve(state_dir, port, VZPANEL_AGENT_WORKERS="2")
    try:
        out = read_until(proc, r"up at http://127\.0\.0\.1:\d+/")
        assert "created admin 'root-admin'" in out
        children = psutil.Process(proc.pid).children(recursive=True)
        users = {c.name(): c.username() for c in children}
        assert "redis-server" in users
        web = [c for c in children if "daphne" in " ".join(c.cmdline())]
        # serve's own children: a worker's work-horse (a fork running a job) has the same command line
        agent = [c for c in psutil.Process(proc.pid).children() if "rqworker" in " ".join(c.cmdline())]
        console = [c for c in children if "consoled" in " ".join(c.cmdline())]
        assert web and web[0].username() == "vzpanel"  # the web process is unprivileged
        assert len(agent) == 2 and {a.username() for a in agent} == {"root"}  # VZPANEL_AGENT_WORKERS=2
        assert console and console[0].username() == "root"  # it attaches to VEs
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=10).read().decode()
        assert "Log in" in page
        css = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/vendor/bootstrap/bootstrap.min.css", timeout=10)
        assert css.status == 200
        assert (state_dir / "db.sqlite3").stat().st_uid == pwd.getpwnam("vzpanel").pw_uid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE

    # A second run keeps the admin and its password.
    proc = serve(state_dir, free_port())
    try:
        out = read_until(proc, r"up at http")
        assert "admin root-admin exists already (password unchanged)" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_it_refuses_to_start_when_the_web_user_cannot_run_the_code(state_dir):
    reason = web_user_can_run_python()
    if reason is None:
        pytest.skip("the web user can run this Python here")
    proc = serve(state_dir, free_port())
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "cannot run" in out and "readable to that user" in out
    assert not (state_dir / "run" / "redis.sock").exists()  # the Redis it had started was stopped


def test_it_starts_the_console_daemon_and_stops_it_by_pid(state_dir):
    """Everything as root (VZPANEL_WEB_USER=root, as on a host where the web user cannot run this Python)."""
    import asyncio

    from vzpanel.lib.channels import RedisChannelLayer

    proc = serve(state_dir, free_port(), VZPANEL_WEB_USER="root")
    try:
        read_until(proc, r"up at http")
        children = psutil.Process(proc.pid).children(recursive=True)
        console = [c for c in children if "consoled" in " ".join(c.cmdline())]
        assert len(console) == 1 and console[0].username() == "root"
        layer = RedisChannelLayer(hosts=[{"address": f"unix://{state_dir / 'run' / 'redis.sock'}"}])

        async def ping():
            reply = await layer.new_channel()
            await layer.send("console.local", {"type": "console.ping", "reply": reply})
            return await asyncio.wait_for(layer.receive(reply), 10)

        assert asyncio.run(ping())["type"] == "console.pong"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0
    assert f"stopped console (pid {console[0].pid})" in out
    assert not console[0].is_running() or console[0].status() == psutil.STATUS_ZOMBIE
