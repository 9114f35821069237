"""Run the whole panel on one host: Redis, the web server, the node agent and reconcile."""

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

STOP_TIMEOUT = 15


def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Command(BaseCommand):
    help = (
        "Start vzpanel on this host (as root): a private Redis unless REDIS_URL is set, the ASGI server as "
        "the unprivileged web user, and the node agent (RQ worker and console daemon) as root. Ctrl-C stops "
        "everything."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, host, port, **options):
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.as_root = os.geteuid() == 0
        self.state = settings.STATE_DIR
        self.web_user = self.prepare_user()
        self.prepare_state()
        self.migrate_and_admin()
        env = self.child_env()
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        try:
            if not os.environ.get("REDIS_URL"):
                self.start_redis(env)
            self.check_web_user_can_run()
            self.start("web", [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "--proxy-headers",
                               "vzpanel.asgi:application"], env, as_web_user=True)
            for i in range(1, settings.AGENT_WORKERS + 1):
                self.start(f"agent{i}", [sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker",
                                         f"node:{settings.VZPANEL_NODE}", "--name",
                                         f"agent-{settings.VZPANEL_NODE}-{os.getpid()}-{i}"],
                           env, as_web_user=False)
            # The console daemon attaches to VEs, so it runs as root too; the web process only relays to it.
            self.start("console", [sys.executable, str(settings.BASE_DIR / "manage.py"), "consoled",
                                   "--node", settings.VZPANEL_NODE], env, as_web_user=False)
            self.wait_for_port(host, port)
            shown = f"[{host}]" if ":" in host else host
            self.say(f"up at http://{shown}:{port}/")
            self.say(", ".join(f"{name} pid {p.pid}" for name, p in self.children.items()))
            self.loop()
        finally:
            self.stop_all()

    # -- set-up ----------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.stdout.write(f"vzpanel: {text}")
        self.stdout.flush()

    def prepare_user(self):
        if not self.as_root:
            self.say("not running as root: every process runs as the current user (development mode)")
            return None
        name = settings.VZPANEL_WEB_USER
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        if not shutil.which("useradd"):
            raise CommandError(f"The web user {name!r} does not exist and useradd is missing to create it.")
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir", str(self.state), "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], check=True)
        self.say(f"created system user {name}")
        return pwd.getpwnam(name)

    def chown(self, path: Path) -> None:
        if self.web_user is not None and path.exists():
            os.chown(path, self.web_user.pw_uid, self.web_user.pw_gid)

    def prepare_state(self):
        """Make the state directory the web user's: it and the root agent share the SQLite files in it."""
        self.state.mkdir(parents=True, exist_ok=True, mode=0o750)
        (self.state / "run").mkdir(exist_ok=True, mode=0o750)
        for path in (self.state, self.state / "run"):
            self.chown(path)
            path.chmod(0o750)
        key = settings.SECRET_KEY_FILE
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50) + "\n")
            self.say(f"wrote a new secret key to {key}")
        self.chown(key)
        settings.SECRET_KEY = key.read_text().strip()

    def migrate_and_admin(self):
        call_command("migrate", interactive=False, verbosity=0)
        self.ensure_admin()
        connections.close_all()
        # SQLite: the files root just created must be the web user's (root-created WAL/SHM files
        # take the database file's owner, so the owner of the main file is what matters).
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            db = Path(settings.DATABASES["default"]["NAME"])
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                self.chown(path)
                if path.exists():
                    path.chmod(0o600)

    def ensure_admin(self):
        from django.contrib.auth import get_user_model

        User = get_user_model()
        name = os.environ.get("VZPANEL_ADMIN_USER", "")
        password = os.environ.get("VZPANEL_ADMIN_PASSWORD", "")
        if not name and User.objects.filter(is_superuser=True).exists():
            self.say("an admin account exists already (password unchanged)")
            return
        name = name or "admin"
        if User.objects.filter(username=name).exists():
            self.say(f"admin {name} exists already (password unchanged)")
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(name, "", password, role=User.Role.ADMIN)
        if generated:
            self.say(f"created admin {name!r} with password {password!r} (shown once; change it after logging in)")
        else:
            self.say(f"created admin {name!r} with the password from VZPANEL_ADMIN_PASSWORD")

    def child_env(self) -> dict:
        env = dict(os.environ)
        env["VZPANEL_STATE"] = str(self.state)
        env["DJANGO_SETTINGS_MODULE"] = "vzpanel.settings"
        env["PYTHONUNBUFFERED"] = "1"
        if not os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = f"unix://{self.state / 'run' / 'redis.sock'}"
        env.setdefault("VZPANEL_NODE", settings.VZPANEL_NODE)
        return env

    def check_web_user_can_run(self):
        if self.web_user is None:
            return
        try:
            probe = subprocess.run([sys.executable, "-c", "import daphne, django, vzpanel"],
                                   cwd=settings.BASE_DIR, capture_output=True, text=True, **self.demote_kwargs())
            lines = probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"]
            failure = lines[-1] if probe.returncode else ""
        except OSError as exc:
            failure = str(exc) or "cannot execute"
        if failure:
            raise CommandError(
                f"The web user {self.web_user.pw_name} cannot run {sys.executable} with the panel's code in "
                f"{settings.BASE_DIR}: {failure}. "
                "Make the interpreter, its libraries and the code readable to that user (for instance a "
                "virtualenv made with /usr/bin/python3 in a world-readable directory)."
            )

    def demote_kwargs(self) -> dict:
        if self.web_user is None:
            return {}
        return {"user": self.web_user.pw_uid, "group": self.web_user.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.state)}}

    # -- children ------------------------------------------------------------------------------------

    def start(self, name, argv, env, *, as_web_user: bool):
        kwargs = self.demote_kwargs() if as_web_user else {}
        kwargs["env"] = {**env, "HOME": str(self.state)} if as_web_user else env
        # Own process group: Ctrl-C in the terminal reaches us, and we stop the children in order.
        proc = subprocess.Popen(argv, cwd=settings.BASE_DIR, start_new_session=True, **kwargs)
        self.children[name] = proc
        return proc

    def start_redis(self, env):
        redis = shutil.which("redis-server")
        if not redis:
            raise CommandError("redis-server is not installed; install it or set REDIS_URL.")
        sock = self.state / "run" / "redis.sock"
        data = self.state / "redis"
        data.mkdir(exist_ok=True, mode=0o700)
        self.chown(data)
        argv = [redis, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(data),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        # Redis runs as the web user: its socket is then open to that user and to root only.
        self.start("redis", argv, env, as_web_user=True)
        deadline = time.monotonic() + 10
        import redis as redis_py

        while time.monotonic() < deadline:
            try:
                if redis_py.Redis(unix_socket_path=str(sock)).ping():
                    return
            except redis_py.RedisError:
                time.sleep(0.1)
            if self.children["redis"].poll() is not None:
                break
        raise CommandError("the private redis-server did not start; see its messages above")

    def wait_for_port(self, host, port):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    raise CommandError(f"{name} exited with status {proc.returncode} while starting")
            try:
                with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), 1):
                    return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"the web server did not listen on {host}:{port} within 30 s")

    def loop(self):
        from vzpanel.tasks.queue import get_queue

        queue = get_queue(settings.VZPANEL_NODE)
        next_reconcile = 0.0
        periodic: list = []  # the last reconcile and tick jobs: a new round waits until they have run
        next_status = time.monotonic() + 60
        while not self.stopping:
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    self.say(f"{name} (pid {proc.pid}) exited with status {proc.returncode}; stopping")
                    return
            now = time.monotonic()
            if now >= next_reconcile and not self.still_pending(periodic):
                next_reconcile = now + settings.RECONCILE_INTERVAL
                try:
                    periodic = [
                        queue.enqueue("vzpanel.nodes.reconcile.reconcile_node", settings.VZPANEL_NODE,
                                      result_ttl=0, failure_ttl=3600, job_timeout=300, description="reconcile"),
                        # the classroom tick: lab schedules and the idle policy
                        queue.enqueue("vzpanel.classroom.jobs.tick", settings.VZPANEL_NODE, result_ttl=0,
                                      failure_ttl=3600, job_timeout=300, description="classroom tick"),
                    ]
                except Exception as exc:
                    self.say(f"could not queue reconcile: {exc}")
            if now >= next_status:
                next_status = now + 60
                try:
                    queued = len(queue)
                except Exception:
                    queued = "?"
                self.say(f"status: {', '.join(self.children)} up; {queued} job(s) waiting on {queue.name}")
            time.sleep(0.5)

    @staticmethod
    def still_pending(jobs) -> bool:
        """Whether any of jobs is still queued or running (several agents must not reconcile at once)."""
        for job in jobs:
            try:
                if job.get_status(refresh=True) in ("queued", "started", "deferred", "scheduled"):
                    return True
            except Exception:  # gone from Redis: it ran (result_ttl=0) or was lost
                continue
        return False

    def on_signal(self, signum, frame):
        self.stopping = True

    def stop_all(self):
        """Stop the children we started, by pid: web first, then the console daemon, the agents (together), Redis."""
        agents = tuple(name for name in self.children if name.startswith("agent"))
        for group in (("web",), ("console",), agents, ("redis",)):
            procs = {name: self.children[name] for name in group
                     if name in self.children and self.children[name].poll() is None}
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for name, proc in procs.items():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.say(f"stopped {name} (pid {proc.pid})")
        for proc in self.children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


