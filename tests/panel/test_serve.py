"""`manage.py serve` details the README's run command relies on (test_run_command.py runs the command itself):
the console daemon it starts answers on the channel layer and is stopped by pid; a web user that cannot run the
code is refused before anything stays running."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def test_it_refuses_to_start_when_the_web_user_cannot_run_the_code(state_dir):
    reason = web_user_can_run_python()
    if reason is None:
        pytest.skip("the web user can run this Python here")
    proc = serve(state_dir, free_port())
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "cannot run" in out and "readable to that user" in out
    assert not (state_dir / "run" / "redis" / "redis.sock").exists()  # the Redis it had started was stopped


def test_it_starts_the_console_daemon_and_stops_it_by_pid(state_dir):
    """Everything as root (VZPANEL_WEB_USER=root, as on a host where the web user cannot run this Python)."""
    import asyncio

    from vzpanel.lib.channels import RedisChannelLayer

    # An engine root that does not exist: the agent and reconcile must not create one by asking about it.
    proc = serve(state_dir, free_port(), VZPANEL_WEB_USER="root", VZ_ROOT=str(state_dir.parent / "no-engine"))
    try:
        read_until(proc, r"up at http")
        children = psutil.Process(proc.pid).children(recursive=True)
        console = [c for c in children if "consoled" in " ".join(c.cmdline())]
        assert len(console) == 1 and console[0].username() == "root"
        password = (state_dir / "secrets" / "redis-panel").read_text().strip()
        sock = state_dir / "run" / "redis" / "redis.sock"
        layer = RedisChannelLayer(hosts=[{"address": f"unix://panel:{password}@{sock}"}])

        async def ping():
            reply = await layer.new_channel()
            await layer.send("console.local", {"type": "console.ping", "reply": reply})
            return await asyncio.wait_for(layer.receive(reply), 10)

        assert asyncio.run(ping())["type"] == "console.pong"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0
    assert not (state_dir.parent / "no-engine").exists()  # starting the panel made no engine root
    assert f"stopped console (pid {console[0].pid})" in out
    assert not console[0].is_running() or console[0].status() == psutil.STATUS_ZOMBIE
