"""The README's run command, started exactly as a user would: `scripts/run --port PORT --http-port PORT2` with a
state directory and an engine root from the environment. It sets up (idempotently), serves HTTPS with a
self-signed certificate (HTTP redirects), prints the address and the admin's generated password; that admin logs
in, creates a tiny VE through the API and sees it running; SIGTERM stops every process it started within
seconds, and the VE keeps running (the engine, not the panel, owns it)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.panel.conftest import REPO, free_port

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Output:
    """The run command's output, read on a thread so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} in the run command's output:\n{self.text()}")
                self.cond.wait(left)

    def text(self) -> str:
        return "".join(self.lines[-200:])


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """A cookie-keeping HTTP client speaking to the panel as a signed-in user would (CSRF included)."""

    def __init__(self, base: str, cafile: Path):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        # The panel's own self-signed certificate is the one trusted: verified, not switched off.
        context = ssl.create_default_context(cafile=str(cafile))
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  urllib.request.HTTPSHandler(context=context))

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def get(self, path: str):
        return self.opener.open(self.base + path, timeout=30)

    def post_form(self, path: str, fields: dict):
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": self.csrf()}).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Referer": self.base + path})
        return self.opener.open(req, timeout=30)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "X-CSRFToken": self.csrf(),
                                              "Referer": self.base + "/"})
        with self.opener.open(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture
def state_dir():
    # Under /var/tmp, not pytest's 0700 tmp: the web user must reach its state directory.
    top = Path(tempfile.mkdtemp(prefix="vzpanel-run-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    yield top / "state"
    shutil.rmtree(top, ignore_errors=True)


def run_command(state_dir: Path, vz_root: Path, port: int, http_port: int = 0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "VZPANEL_ADMIN_USER", "VZPANEL_ADMIN_PASSWORD")}
    env.update(VZPANEL_STATE=str(state_dir), VZ_ROOT=str(vz_root), VZPANEL_2FA_REQUIRED_ROLES="",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([str(REPO / "scripts" / "run"), "--port", str(port), "--http-port", str(http_port)],
                            cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: leave nothing behind for the next test
        proc.wait()
        raise AssertionError(f"the run command did not stop within {timeout} s of SIGTERM") from None
    return time.monotonic() - t0


def test_the_readme_run_command_serves_creates_a_ve_and_stops_everything(state_dir, vz_root):
    from vzengine import Engine

    port, http_port = free_port(), free_port()
    proc = run_command(state_dir, vz_root, port, http_port)
    out = Output(proc)
    ctid = None
    try:
        out.wait_for(rf"up at https://127\.0\.0\.1:{port}/", timeout=600)  # setup may still build a template
        name, password = out.wait_for(r"created admin '([^']+)' with password '([^']+)'", timeout=1).groups()
        started = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        assert {p.username() for p in started if "daphne" in " ".join(p.cmdline())} == {"vzpanel"}
        assert {p.username() for p in started if "rqworker" in " ".join(p.cmdline())} == {"vzpanel"}
        assert {p.username() for p in started if "vzpanel.agent" in " ".join(p.cmdline())} == {"root"}

        # Plain HTTP answers with a redirect to the HTTPS port, nothing else.
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/login/?next=/ves/")
        try:
            urllib.request.build_opener(NoRedirect()).open(req, timeout=10)
            raise AssertionError("plain HTTP was served instead of redirected")
        except urllib.error.HTTPError as exc:
            assert exc.code == 301 and exc.headers["Location"] == f"https://127.0.0.1:{port}/login/?next=/ves/"
        web = Browser(f"https://127.0.0.1:{port}", state_dir / "tls" / "cert.pem")
        login = web.get("/login/")
        assert "max-age=" in (login.headers["Strict-Transport-Security"] or "")
        assert all(c.secure for c in web.jar if c.name == "csrftoken")
        landing = web.post_form("/login/", {"username": name, "password": password})
        assert "/login/" not in landing.geturl(), "the printed admin credentials did not sign in"
        task = web.api("POST", "/api/ves/", {"ostemplate": "tiny", "hostname": "readme-ve"})
        ctid = task["ve"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ve = web.api("GET", f"/api/ves/{ctid}/")
            if ve["status"] == "running":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"VE {ctid} is {ve['status']}, not running, 120 s after it was created:\n{out.text()}")
        assert Engine(vz_root).status(ctid).status == "running"
    finally:
        started = [p for p in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        took = stop(proc, timeout=30)
    assert proc.returncode == 0, out.text()
    assert took < 15, f"stopping took {took:.1f} s"
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"still running after SIGTERM: {[(p.pid, p.cmdline()) for p in left]}"
    try:
        # The documented behaviour: stopping the panel leaves VEs as they are (the engine owns them).
        assert Engine(vz_root).status(ctid).status == "running"
    finally:
        if ctid and Engine(vz_root).exists(ctid):
            Engine(vz_root).destroy(ctid)

    # A second run starts again without reinstalling anything, keeps the admin, and stops on SIGTERM too.
    proc = run_command(state_dir, vz_root, free_port())
    out = Output(proc)
    try:
        out.wait_for(r"up at http", timeout=120)
        assert "Debian packages: all present" in out.text() and "Python packages: up to date" in out.text()
        assert "an admin account exists already (password unchanged)" in out.text()
    finally:
        stop(proc, timeout=30)


def test_setup_in_run_mode_on_a_set_up_machine_exits_0():
    proc = subprocess.run([str(REPO / "scripts" / "setup")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "setup done" in proc.stdout


def test_a_failing_setup_step_says_which_step_failed():
    proc = subprocess.run([str(REPO / "scripts" / "setup"), "--bogus"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "unknown mode '--bogus'" in proc.stderr
