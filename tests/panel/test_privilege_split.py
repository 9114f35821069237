"""The privilege split under attack: the web user (``vzpanel``), compromised, must not become root.

Every attack runs in a process with the web user's real uid and gid, using the Redis credentials that user
really has (read from <state>/secrets/redis-panel as that user), against a real `manage.py serve` (private
Redis with ACL users, RQ workers as the web user, the node agent as root) driving a private engine root.
Each test then checks the host itself (owners, modes, contents, no new files), not only the error messages.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.panel.conftest import REPO, free_port
from tests.panel.test_run_command import Output

pytestmark = [pytest.mark.root, pytest.mark.slow]

WEB_USER = "vzpanel"
NODE = "local"
REQUESTS = f"vz:agent:{NODE}:requests"
REFUSED = f"vz:agent:{NODE}:refused"


# --- running things as someone else ------------------------------------------------------------------

def as_user(user: str, code: str, state: Path, *, stdin: str = "", timeout: float = 180,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run python code as user (its own uid and gid, no other groups) with the web user's environment."""
    pw = pwd.getpwnam(user)
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
               "DJANGO_SETTINGS_MODULE": "vzpanel.settings", "VZPANEL_STATE": str(state), "VZPANEL_NODE": NODE,
               **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environ, input=stdin,
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], capture_output=True, text=True,
                          timeout=timeout)


def as_web_json(code: str, state: Path, **kw) -> dict:
    """Run code as the web user; it prints one JSON object last, which is returned."""
    proc = as_user(WEB_USER, code, state, **kw)
    assert proc.returncode == 0, f"the attacker script failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The prologue of every attack: the Redis connection the web user really has.
CONNECT = """
import json, os, sys, time
import redis
state = os.environ["VZPANEL_STATE"]
password = open(f"{state}/secrets/redis-panel").read().strip()
sock = f"{state}/run/redis/redis.sock"
conn = redis.Redis(unix_socket_path=sock, username="panel", password=password, socket_timeout=None)
conn.ping()
"""


# --- the host before and after --------------------------------------------------------------------

def fingerprint(path: str | Path) -> tuple | None:
    """Owner, group, mode (and for a regular file mtime and content hash) of path, not following a link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):  # a directory's mtime moves with anyone's files: new names are checked apart
        return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_IFMT(st.st_mode))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_IFMT(st.st_mode), st.st_mtime_ns, digest)


WATCHED = ["/etc/shadow", "/etc/passwd", "/etc/sudoers", "/etc", "/", "/root", "/etc/redis", "/etc/cron.d"]


def host_state(extra: list[Path] = ()) -> dict:
    return {str(p): fingerprint(p) for p in [*WATCHED, *extra]}


def marked(marker: str) -> list[str]:
    """Files named after marker anywhere an attacker would drop one."""
    found = []
    for d in ("/tmp", "/", "/etc", "/root", "/var/tmp"):
        with contextlib.suppress(OSError):
            found += [os.path.join(d, n) for n in os.listdir(d) if marker in n]
    return found


def root_file(directory: Path, name: str, content: str) -> Path:
    """A root-owned 0600 file the web user must not be able to touch."""
    path = directory / name
    path.write_text(content)
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)
    return path


# --- the panel ------------------------------------------------------------------------------------

@dataclass
class Panel:
    state: Path
    vz_root: Path
    proc: subprocess.Popen | None = None
    out: Output | None = None
    runs: list = field(default_factory=list)

    def start(self, wait: bool = True) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "VZPANEL_ADMIN_USER", "VZPANEL_ADMIN_PASSWORD",
                            "VZPANEL_AGENT_REDIS_URL", "VZPANEL_SECRET_KEY") and not k.startswith("PYTEST_")}
        env.update(VZPANEL_STATE=str(self.state), VZ_ROOT=str(self.vz_root), VZPANEL_2FA_REQUIRED_ROLES="",
                   VZPANEL_RECONCILE_INTERVAL="3600", VZPANEL_WORKERS="2", PYTHONUNBUFFERED="1",
                   DJANGO_SETTINGS_MODULE="vzpanel.settings", VZPANEL_NODE=NODE)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "serve", "--port", str(free_port())], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.out = Output(self.proc)
        self.runs.append(self.out)
        if wait:
            self.out.wait_for(r"vzpanel: up at http", timeout=120)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group we started, by its pid
                proc.wait()

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and any(
            "vzpanel: up at" in line for line in self.out.lines)


def state_top() -> Path:
    # Under /var/tmp, not pytest's 0700 tmp: the web user must reach its state directory.
    top = Path(tempfile.mkdtemp(prefix="vzpanel-split-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    return top


@pytest.fixture(scope="module")
def ve_ctid(vz_root):
    """A real (stopped) VE the attacks aim at; destroyed at the end."""
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=30)
    ctid = 900_000 + os.getpid() % 10_000 * 10
    eng.create(ctid, "tiny", hostname="victim")
    try:
        yield ctid
    finally:
        for c in (ctid, ctid + 1):
            if eng.exists(c):
                eng.destroy(c)


@pytest.fixture(scope="module")
def panel(vz_root, ve_ctid):
    """One `manage.py serve` shared by the attacks (tests may restart it); stopped and removed at the end."""
    top = state_top()
    p = Panel(top / "state", vz_root)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        shutil.rmtree(top, ignore_errors=True)


# --- 1. code on the queues, forged requests to the agent -------------------------------------------

class _Exploit:
    """A pickle that runs a shell command when unpickled (what RQ's serializer would do with it)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def forged_requests(marker: str, victim: int) -> list[tuple[str, bytes, str | None, set]]:
    """(label, raw bytes, reply id or None when no reply can be addressed, acceptable error kinds)."""
    touch = f"id > /tmp/{marker}-agent; id > /{marker}-agent"
    other = victim + 1  # does not exist
    out = []

    def req(label, op, params, kinds=frozenset({"Refused"}), **over):
        rid = secrets.token_hex(16)
        body = {"v": 1, "id": rid, "op": op, "params": params, "sender": f"attacker {label}", **over}
        out.append((label, json.dumps(body).encode(), rid, set(kinds)))

    def raw(label, data: bytes):
        out.append((label, data, None, set()))

    raw("not JSON", b"\x80\x04 not json {" + touch.encode())
    raw("pickle bytes", pickle.dumps(_Exploit(touch)))
    raw("JSON list", json.dumps(["os.system", touch]).encode())
    raw("op os.system", json.dumps({"v": 1, "id": secrets.token_hex(16), "op": "os.system",
                                    "params": {"command": touch}}).encode())
    raw("op __import__", json.dumps({"v": 1, "id": secrets.token_hex(16), "op": "__import__",
                                     "params": {"name": "os"}}).encode())
    raw("op builtins.eval", json.dumps({"v": 1, "id": secrets.token_hex(16), "op": "builtins.eval",
                                        "params": {"source": f"__import__('os').system({touch!r})"}}).encode())
    raw("protocol v2", json.dumps({"v": 2, "id": secrets.token_hex(16), "op": "ping", "params": {}}).encode())
    raw("params a list", json.dumps({"v": 1, "id": secrets.token_hex(16), "op": "ping", "params": [touch]}).encode())
    raw("request id with a path", json.dumps({"v": 1, "id": "../../../../etc/shadow", "op": "ping",
                                              "params": {}}).encode())
    raw("70 kB request", json.dumps({"v": 1, "id": secrets.token_hex(16), "op": "set",
                                     "params": {"ctid": victim, "hostname": "a" * 70_000}}).encode())
    req("unknown op system", "system", {"command": touch})
    req("unknown op eval", "eval", {"source": touch})
    req("agent internal refuse", "refuse", {})
    req("agent internal check_params", "check_params", {})
    invalid = {"InvalidInput"}
    backup_name = {"InvalidInput", "Refused"}  # the agent's type check or the backup lookup, both before any path
    req("restore ../../etc/shadow", "restore", {"name": "../../etc/shadow", "ctid": other, "force": True}, backup_name)
    req("restore /etc/passwd", "restore", {"name": "/etc/passwd", "ctid": other, "force": True}, backup_name)
    req("backup_delete ../../etc/shadow", "backup_delete", {"name": "../../etc/shadow"}, backup_name)
    req("backup_delete /etc/passwd", "backup_delete", {"name": "/etc/passwd"}, backup_name)
    req("backup_exists ../../../../etc/shadow", "backup_exists", {"name": "../../../../etc/shadow"}, backup_name)
    req("restore with a path", "restore", {"name": "ve-1-20240101-000000.tar.zst", "ctid": other,
                                           "path": "/etc/shadow"})
    req("backup into directory /etc", "backup", {"ctid": victim, "directory": "/etc"})
    req("ping with directory", "ping", {"directory": "/"})
    req("snapshot ;rm -rf /", "snapshot", {"ctid": victim, "name": "x;rm -rf /"})
    req("snapshot $(...)", "snapshot", {"ctid": victim, "name": f"$({touch})"})
    req("snapshot_delete ..", "snapshot_delete", {"ctid": victim, "name": ".."})
    req("snapshot_switch a/../../etc", "snapshot_switch", {"ctid": victim, "name": "a/../../etc"})
    req("set hostname ;touch", "set", {"ctid": victim, "hostname": f"x;{touch}"}, invalid)
    req("set hostname $(...)", "set", {"ctid": victim, "hostname": f"$({touch})"}, invalid)
    req("set hostname newline", "set", {"ctid": victim, "hostname": "x\nlxc.mount.entry = / host none bind"},
        invalid)
    req("create hostname backticks", "create", {"ctid": other, "ostemplate": "tiny", "hostname": f"`{touch}`"},
        invalid)
    req("create ostemplate ../../etc", "create", {"ctid": other, "ostemplate": "../../../etc"}, invalid)
    req("template_remove ../../etc", "template_remove", {"name": "../../../etc"})  # not a course image name
    req("template_save ../x", "template_save", {"ctid": victim, "name": "../../../etc/x"})
    # A VE saved over a template everyone builds from would reach every customer's next VE.
    req("template_save over debian-12", "template_save", {"ctid": victim, "name": "debian-12", "replace": True})
    req("template_save over tiny", "template_save", {"ctid": victim, "name": "tiny", "replace": True})
    req("template_remove tiny", "template_remove", {"name": "tiny"})
    req("set ipadd newline", "set", {"ctid": victim, "ipadd": ["10.9.9.9\nlxc.mount.entry = / host none bind"]})
    req("set nameserver ;id", "set", {"ctid": victim, "nameserver": [f"1.1.1.1;{touch}"]})
    req("set cpus newline", "set", {"ctid": victim, "cpus": "1\nlxc.cgroup.devices.allow = a"})
    req("set ram $(...)", "set", {"ctid": victim, "ram": f"$({touch})"})
    req("set userpasswd newline", "set", {"ctid": victim, "userpasswd": [["root", "x\nevil::0:0::/:/bin/sh"]]})
    req("set huge hostname", "set", {"ctid": victim, "hostname": "a" * 60_000})
    req("set hostname NUL", "set", {"ctid": victim, "hostname": "a\x00b"})
    for label, ctid in [("negative", -1), ("zero", 0), ("below range", 99), ("10**30", 10**30),
                        ("above range", 1_000_000_000), ("string", str(victim)), ("float", victim + 0.0),
                        ("bool", True), ("list", [victim]), ("object", {"ctid": victim})]:
        req(f"destroy ctid {label}", "destroy", {"ctid": ctid})
    req("destroy without ctid", "destroy", {})
    req("stop fast as a string", "stop", {"ctid": victim, "fast": "yes"})
    req("sessions of ids as strings", "sessions", {"ctids": [str(victim)] * 3000})
    return out


QUEUE_ATTACK = CONNECT + """
from rq import Queue
from rq.job import Job
marker, vz_root, ctid = os.environ["MARKER"], os.environ["VZ_ROOT"], int(os.environ["CTID"])
m = f"/tmp/{marker}"
calls = [
    ("os.system", (f"id > {m}-system; id > /{marker}-system; id > /etc/{marker}-system",), {}),
    ("subprocess.run", (["sh", "-c", f"id > {m}-subprocess; touch /root/{marker}-subprocess"],), {"check": True}),
    ("builtins.eval", (f"__import__('os').system('id > {m}-eval; touch /etc/{marker}-eval')",), {}),
    ("builtins.exec", (f"import os; os.setuid(0); open('/etc/{marker}-setuid', 'w')",), {}),
    ("builtins.exec", (f"from vzengine import Engine; Engine({vz_root!r}).destroy({ctid})",), {}),
    ("vzengine.engine.Engine.destroy", (ctid,), {}),
    ("os.chmod", ("/etc/shadow", 0o666), {}),
    ("os.chown", ("/etc/shadow", os.getuid(), os.getgid()), {}),
    ("shutil.copy", ("/etc/shadow", f"{m}-shadow"), {}),
]
names = sorted({q.name for q in Queue.all(connection=conn)} | {"node:local", "default", "high", "low"})
jobs = []
for name in names:
    q = Queue(name, connection=conn)
    for func, args, kwargs in calls:
        job = q.enqueue(func, *args, **kwargs, job_timeout=60, result_ttl=600, failure_ttl=600)
        jobs.append((name, func, job.id))
report = {"queues": names, "jobs": []}
deadline = time.monotonic() + 120
for name, func, jid in jobs:
    status = None
    while name == "node:local" and time.monotonic() < deadline:
        job = Job.fetch(jid, connection=conn)
        status = job.get_status(refresh=True)
        if status in ("finished", "failed", "stopped", "canceled"):
            break
        time.sleep(0.2)
    job = Job.fetch(jid, connection=conn)
    tail = (job.exc_info or "").strip().splitlines()[-1:] if status == "failed" else []
    status = getattr(status, "value", status)
    report["jobs"].append({"queue": name, "func": func, "status": str(status), "result": repr(job.return_value())
                           if status == "finished" else None, "error": tail[0] if tail else ""})
print(json.dumps(report))
"""

AGENT_ATTACK = CONNECT + """
import base64
cases = json.loads(sys.stdin.read())
before = conn.llen(os.environ["REFUSED"])
for label, raw, rid in cases:
    conn.rpush(os.environ["REQUESTS"], base64.b64decode(raw))
replies = {}
for label, raw, rid in cases:
    if rid is None:
        continue
    events = []
    while True:
        try:
            got = conn.blpop([f"vz:agent:local:reply:{rid}"], timeout=30)
        except redis.TimeoutError:
            got = None
        if got is None:
            events.append({"t": "timeout"})
            break
        events.append(json.loads(got[1]))
        if events[-1]["t"] != "progress":
            break
    replies[label] = events[-1]
# Still alive and serving: a legitimate request afterwards.
rid = "%032x" % int.from_bytes(os.urandom(16), "big")
conn.rpush(os.environ["REQUESTS"], json.dumps({"v": 1, "id": rid, "op": "ping", "params": {}}))
got = conn.blpop([f"vz:agent:local:reply:{rid}"], timeout=60)
refused = [json.loads(x) for x in conn.lrange(os.environ["REFUSED"], 0, -1)]
print(json.dumps({"replies": replies, "ping": json.loads(got[1]) if got else None, "before": before,
                  "refused": refused}))
"""

AUDIT_READ = """
import json, django
django.setup()
from vzpanel.audit.models import AuditEntry
print(json.dumps([e.detail for e in AuditEntry.objects.filter(action="agent.refused")]))
"""


def test_it_runs_nothing_as_root_from_the_queues_and_refuses_every_forged_agent_request(panel, ve_ctid, vz_root):
    from vzengine import Engine

    web = pwd.getpwnam(WEB_USER)
    marker = f"vzsplit-{secrets.token_hex(4)}"
    eng = Engine(vz_root, lock_wait=30)
    victim_conf = eng.config(ve_ctid).hostname
    before = host_state()
    try:
        # RQ jobs: they do run (the workers are the web user, pickle there is same-trust), but only as vzpanel.
        report = as_web_json(QUEUE_ATTACK, panel.state, env={"MARKER": marker, "VZ_ROOT": str(vz_root),
                                                              "CTID": str(ve_ctid)})
        local = {(j["func"], j["status"]) for j in report["jobs"] if j["queue"] == "node:local"}
        assert all(status in ("finished", "failed") for _, status in local), report
        system_marker = Path(f"/tmp/{marker}-system")
        assert system_marker.exists(), f"the os.system job did not run at all: {report}"
        for path in marked(marker):
            st = os.lstat(path)
            assert path.startswith("/tmp/"), f"{path} was written outside /tmp: {report}"
            assert (st.st_uid, st.st_gid) == (web.pw_uid, web.pw_gid), f"{path} is not the web user's"
            if not path.endswith("-shadow"):
                text = Path(path).read_text()
                assert text.startswith(f"uid={web.pw_uid}({WEB_USER}) gid={web.pw_gid}"), text
        assert not Path(f"/tmp/{marker}-shadow").exists(), "a worker could read /etc/shadow"
        failed = {j["func"]: j["error"] for j in report["jobs"] if j["queue"] == "node:local"
                  and j["status"] == "failed"}
        for func in ("os.chmod", "os.chown", "shutil.copy", "vzengine.engine.Engine.destroy"):
            assert func in failed, f"{func} did not fail as the web user: {report}"
        assert "PermissionError" in failed["os.chmod"] and "PermissionError" in failed["os.chown"], failed
        assert eng.exists(ve_ctid), "an RQ job destroyed the VE"

        # Raw requests on the agent's list.
        cases = forged_requests(marker, ve_ctid)
        sent = json.dumps([(label, base64.b64encode(raw).decode(), rid) for label, raw, rid, _ in cases])
        result = as_web_json(AGENT_ATTACK, panel.state, stdin=sent, env={"REQUESTS": REQUESTS, "REFUSED": REFUSED})
        wrong = {}
        for label, _raw, rid, kinds in cases:
            if rid is None:
                continue
            ev = result["replies"].get(label)
            if not (ev and ev.get("t") == "error" and ev.get("kind") in kinds):
                wrong[label] = ev
        assert not wrong, (f"forged requests not refused as expected: {json.dumps(wrong, indent=1)[:4000]}\n"
                           f"{panel.out.text()[-3000:]}")
        assert result["ping"] and result["ping"]["t"] == "result", result["ping"]
        agent_pid = result["ping"]["value"]["pid"]
        assert os.stat(f"/proc/{agent_pid}").st_uid == 0, "the agent answering is not root"
        # Every refusal is on record (the malformed ones too, which have no reply list to answer on).
        refusals = [label for label, _raw, rid, kinds in cases if rid is None or kinds == {"Refused"}]
        recorded = result["refused"][result["before"]:]
        assert len(recorded) >= len(refusals), (len(recorded), refusals, recorded)
        assert all(r["node"] == NODE and r["why"] for r in recorded)

        # Nothing changed on the host nor in the VE.
        assert marked(f"{marker}-agent") == [], "a forged request ran a command"
        assert host_state() == before
        assert eng.exists(ve_ctid) and not eng.exists(ve_ctid + 1)
        assert eng.config(ve_ctid).hostname == victim_conf == "victim"
        assert eng.status(ve_ctid).status == "stopped"
        assert eng.snapshot_list(ve_ctid) == []

        # The reconcile (as the web user, as the workers run it) copies the refusals into the audit log.
        proc = as_user(WEB_USER, "import runpy, sys; sys.argv = ['manage.py', 'reconcile']; "
                       "runpy.run_path('manage.py', run_name='__main__')", panel.state)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        details = json.loads(as_user(WEB_USER, AUDIT_READ, panel.state).stdout.strip().splitlines()[-1])
        assert len(details) >= len(refusals), details
        joined = "\n".join(details)
        for needle in ("unknown operation 'system'", "malformed operation name 'os.system'", "not JSON",
                       "takes no parameter 'directory'", "takes no parameter 'path'", "ctid must be a whole number"):
            assert needle in joined, f"{needle!r} missing from the audit log:\n{joined[:3000]}"
    finally:
        for path in marked(marker):
            with contextlib.suppress(OSError):
                os.unlink(path)


# --- 2. Redis: no way in without credentials, and no admin commands with them ------------------------

REDIS_PROBE = """
import json, os, redis
state = os.environ["VZPANEL_STATE"]
sock = f"{state}/run/redis/redis.sock"
out = {}
def attempt(label, fn):
    try:
        out[label] = "ok: " + repr(fn())[:200]
    except Exception as exc:
        out[label] = f"{type(exc).__name__}: {exc}"[:300]
attempt("read panel password", lambda: open(f"{state}/secrets/redis-panel").read())
attempt("read agent password", lambda: open(f"{state}/secrets/redis-agent-local").read())
attempt("no credentials", lambda: redis.Redis(unix_socket_path=sock).ping())
attempt("default user", lambda: redis.Redis(unix_socket_path=sock, username="default", password="").ping())
attempt("panel, wrong password", lambda: redis.Redis(unix_socket_path=sock, username="panel",
                                                      password="guess").ping())
attempt("agent, guessed password", lambda: redis.Redis(unix_socket_path=sock, username="agent-local",
                                                        password="guess").ping())
if os.environ.get("WITH_PANEL"):
    r = redis.Redis(unix_socket_path=sock, username="panel",
                    password=open(f"{state}/secrets/redis-panel").read().strip())
    attempt("panel ping", r.ping)
    for label, args in [
        ("CONFIG SET dir", ("CONFIG", "SET", "dir", "/etc")),
        ("CONFIG SET dbfilename", ("CONFIG", "SET", "dbfilename", "passwd")),
        ("CONFIG GET", ("CONFIG", "GET", "*")),
        ("CONFIG REWRITE", ("CONFIG", "REWRITE")),
        ("MODULE LOAD", ("MODULE", "LOAD", "/tmp/evil.so")),
        ("ACL SETUSER", ("ACL", "SETUSER", "panel", "+@all")),
        ("ACL SETUSER new", ("ACL", "SETUSER", "evil", "on", ">pw", "~*", "+@all")),
        ("ACL LIST", ("ACL", "LIST")),
        ("ACL SAVE", ("ACL", "SAVE")),
        ("DEBUG", ("DEBUG", "SLEEP", "0")),
        ("SAVE", ("SAVE",)),
        ("BGSAVE", ("BGSAVE",)),
        ("SHUTDOWN", ("SHUTDOWN", "NOSAVE")),
        ("REPLICAOF", ("REPLICAOF", "127.0.0.1", "1")),
        ("MONITOR", ("MONITOR",)),
        ("CLIENT KILL", ("CLIENT", "KILL", "TYPE", "normal")),
        ("EVAL os.execute", ("EVAL", "return os.execute('id > /tmp/x')", "0")),
        ("EVAL io.open", ("EVAL", "return io.open('/etc/shadow')", "0")),
    ]:
        attempt(label, lambda args=args: r.execute_command(*args))
print(json.dumps(out))
"""


def test_redis_admits_no_one_without_credentials_and_no_admin_commands_with_the_web_users(panel):
    before = host_state([panel.state / "run" / "redis.conf"])
    nobody = json.loads(as_user("nobody", REDIS_PROBE, panel.state).stdout.strip().splitlines()[-1])
    for label, answer in nobody.items():
        assert answer.startswith("PermissionError") or "Permission denied" in answer, (label, answer)

    web = as_web_json(REDIS_PROBE, panel.state, env={"WITH_PANEL": "1"})
    assert web.pop("read panel password").startswith("ok: "), "the web user cannot read its own Redis password"
    assert web.pop("read agent password").startswith("PermissionError"), "the web user reads the agent's password"
    assert web.pop("panel ping") == "ok: True"
    refused_login = ("NOAUTH", "WRONGPASS", "AuthenticationError", "invalid username-password")
    for label in ("no credentials", "default user", "panel, wrong password", "agent, guessed password"):
        answer = web.pop(label)
        assert any(w in answer for w in refused_login), (label, answer)
    for label, answer in web.items():
        if label.startswith("EVAL"):
            # Lua is sandboxed: no os.execute, no io.
            assert answer.startswith("ResponseError"), (label, answer)
        else:
            # MODULE and DEBUG are off in the server altogether (enable-*-command no), before ACLs are asked.
            assert answer.startswith("NoPermissionError") or "NOPERM" in answer or (
                label in ("MODULE LOAD", "DEBUG") and "command not allowed" in answer), (label, answer)
    assert panel.proc.poll() is None, "SHUTDOWN from the web user stopped Redis and the panel"
    assert host_state([panel.state / "run" / "redis.conf"]) == before


# --- 3. links planted in the web user's data/ -----------------------------------------------------

PLANT = """
import json, os
state = os.environ["VZPANEL_STATE"]
out = {}
def attempt(label, fn):
    try:
        fn()
        out[label] = "ok"
    except OSError as exc:
        out[label] = f"{type(exc).__name__}: {exc.strerror}"
for d in ("", "run", "secrets", "run/redis"):
    where = os.path.join(state, d)
    attempt(f"create file in {d or '.'}", lambda w=where: open(os.path.join(w, "evil"), "x").close())
    attempt(f"symlink in {d or '.'}", lambda w=where: os.symlink("/etc/shadow", os.path.join(w, "evil-link")))
    attempt(f"mkdir in {d or '.'}", lambda w=where: os.mkdir(os.path.join(w, "evil-dir")))
attempt("rename data", lambda: os.rename(f"{state}/data", f"{state}/data.old"))
attempt("remove secret_key", lambda: os.unlink(f"{state}/secret_key"))
attempt("write secret_key", lambda: open(f"{state}/secret_key", "a").close())
attempt("chmod state", lambda: os.chmod(state, 0o777))
def link(name, target):
    path = f"{state}/data/{name}"
    tmp = path + ".tmp"
    os.symlink(target, tmp)
    os.replace(tmp, path)
for name, target in json.loads(os.environ["LINKS"]).items():
    attempt(f"plant data/{name}", lambda n=name, t=target: link(n, t))
print(json.dumps(out))
"""


def test_links_planted_by_the_web_user_are_never_followed_by_root(panel):
    top = state_top()
    try:
        wal = root_file(top, "wal-victim", "root's wal victim\n")
        shm = root_file(top, "shm-victim", "root's shm victim\n")
        plain = root_file(top, "plain-victim", "root's plain victim\n")
        watched = [wal, shm, plain]
        before = host_state(watched)
        running = {"x": "/etc/shadow", "passwd": "/etc/passwd", "victim": str(plain)}
        out = as_web_json(PLANT, panel.state, env={"LINKS": json.dumps(running)})
        for label, answer in out.items():
            if label.startswith("plant "):
                assert answer == "ok", (label, answer)
            else:
                assert "Permission denied" in answer or "Operation not permitted" in answer, (label, answer)
        panel.stop()
        # Now, with nothing running, the database's own journal files become links to root's files.
        stopped = {"db.sqlite3-wal": str(wal), "db.sqlite3-shm": str(shm)}
        out = as_web_json(PLANT, panel.state, env={"LINKS": json.dumps(stopped)})
        assert out["plant data/db.sqlite3-wal"] == out["plant data/db.sqlite3-shm"] == "ok", out
        panel.start(wait=False)
        # The web user's database is now broken (its own doing): serve may stop at initpanel; either way
        # root must not have touched the link targets.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not panel.up() and panel.proc.poll() is None:
            time.sleep(0.5)
        assert panel.up() or panel.proc.poll() is not None, "serve neither came up nor stopped"
        panel.stop()
        assert host_state(watched) == before, "a planted link was followed"
        for name, target in {**running, **stopped}.items():
            assert os.readlink(panel.state / "data" / name) == target
        st = os.stat(panel.state)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o750)
        assert os.stat(panel.state / "data").st_uid == pwd.getpwnam(WEB_USER).pw_uid
        for d in ("", "run", "secrets"):
            assert not any(n.startswith("evil") for n in os.listdir(panel.state / d))
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- 4. an old layout: the web user owned the whole state directory ---------------------------------

def test_an_old_web_owned_state_directory_with_planted_links_is_taken_back_safely(vz_root):
    web = pwd.getpwnam(WEB_USER)
    top = state_top()
    p = Panel(top / "state", vz_root)
    try:
        secret = root_file(top, "secret-victim", "root's secret\n")
        before = host_state([secret])
        p.state.mkdir(0o700)
        os.chown(p.state, web.pw_uid, web.pw_gid)
        plants = {"secret_key": str(secret), "run": "/etc", "redis": "/etc"}
        for name, target in plants.items():
            os.symlink(target, p.state / name)
            os.lchown(p.state / name, web.pw_uid, web.pw_gid)  # as the web user would have made them
        db = p.state / "db.sqlite3"
        db.touch(0o600)
        os.chown(db, web.pw_uid, web.pw_gid)
        p.start(wait=False)
        p.out.wait_for(r"vzpanel: up at http", timeout=120)
        p.stop()
        assert host_state([secret]) == before, "a planted link of the old layout was followed"
        st = os.stat(p.state)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o750)
        for name in plants:
            assert not (p.state / name).is_symlink(), f"{name} is still a link"
        key = os.lstat(p.state / "secret_key")
        assert stat.S_ISREG(key.st_mode) and key.st_uid == 0
        assert (p.state / "run").is_dir() and os.lstat(p.state / "run").st_uid == 0
        assert os.lstat(p.state / "data" / "db.sqlite3").st_uid == web.pw_uid
        assert "moved the database into data/" in p.out.text()
    finally:
        p.stop()
        shutil.rmtree(top, ignore_errors=True)
