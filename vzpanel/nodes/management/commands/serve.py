"""Run the whole panel on one host: Redis, the web server, the task workers, the node agent and consoles.

Who runs as whom (the privilege split):

    redis        user vzpanel-redis   private instance, ACL users only (no default user), unix socket
    web          user vzpanel         daphne; the database and Redis as the `panel` ACL user
    worker N     user vzpanel         RQ workers running the panel's tasks; reach root only through the agent
    agent        root                 the node agent (vzpanel.agent): the one door to the engine, Redis only
    console      root                 the console daemon (attaches terminals to VEs)

The state directory belongs to root. The web user writes only its `data/` subdirectory (the SQLite
database); root never opens anything there, and never follows a link the web user could have planted.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vzpanel.core import tls
from vzpanel.nodes.join import agent_acl_line, join_requests, joined_nodes, joins_dir, secret_path

REDIS_USER = "vzpanel-redis"
STOP_GRACE = 5.0  # seconds each process gets after SIGTERM before it is stopped harder


def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Command(BaseCommand):
    help = (
        "Start vzpanel on this host (as root): a private Redis unless REDIS_URL is set, the web server and task "
        "workers as the unprivileged web user, the node agent and console daemon as root. Ctrl-C stops everything."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("VZPANEL_HOST", "127.0.0.1"),
                            help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for every address)")
        parser.add_argument("--port", type=int, default=int(os.environ.get("VZPANEL_PORT", "8443")),
                            help="the HTTPS port (plain HTTP with --no-tls; default 8443)")
        parser.add_argument("--http-port", type=int, default=int(os.environ.get("VZPANEL_HTTP_PORT", "8000")),
                            help="a plain-HTTP port that redirects to HTTPS (0: none; default 8000)")
        parser.add_argument("--no-tls", action="store_true", default=os.environ.get("VZPANEL_NO_TLS") == "1",
                            help="serve plain HTTP on --port (behind a TLS proxy listed in VZPANEL_TRUSTED_PROXIES)")
        parser.add_argument("--redis-listen", default=os.environ.get("VZPANEL_REDIS_LISTEN") or None,
                            metavar="ADDRESS:PORT",
                            help="also let the private Redis listen here, for the agents of other nodes")

    def handle(self, *args, host, port, http_port, no_tls, redis_listen=None, **options):
        self.redis_listen, self.no_tls = redis_listen, no_tls
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.as_root = os.geteuid() == 0
        self.state = Path(settings.STATE_DIR)
        try:
            self.step("the web user", self.prepare_users)
            self.step(f"the state directory {self.state}", self.prepare_state)
            own_redis = not os.environ.get("REDIS_URL")
            urls = self.step("Redis credentials", self.redis_credentials) if own_redis else {
                "panel": os.environ["REDIS_URL"], "agent": os.environ.get("VZPANEL_AGENT_REDIS_URL",
                                                                          os.environ["REDIS_URL"])}
            if own_redis:
                self.step("the private Redis", self.start_redis)
            self.step("the database", self.init_panel, urls["panel"])
            self.step("the web user's access to the code", self.check_web_user_can_run)
            names = self.host_names(host)
            web_env = self.env(REDIS_URL=urls["panel"], VZPANEL_ALLOWED_HOSTS=",".join(names))
            # Root's processes get no database at all: root never opens the web user's files.
            root_env = self.env(REDIS_URL=urls["agent"], VZPANEL_AGENT_REDIS_URL=urls["agent"], VZPANEL_NO_DATABASE="1",
                                drop=("DATABASE_URL",))
            if no_tls:
                endpoints, scheme = [tls.tcp_endpoint(host, port)], "http"
            else:
                cert, key = self.step("the TLS certificate", self.certificate, names)
                endpoints = [tls.daphne_endpoint(host, port, cert, key)]
                if http_port:
                    endpoints.append(tls.tcp_endpoint(host, http_port))
                web_env.update(VZPANEL_TLS="1", VZPANEL_HTTPS_PORT=str(port))
                scheme = "https"
            self.start("web", [sys.executable, "-m", "daphne", *[a for e in endpoints for a in ("-e", e)],
                               "vzpanel.asgi:application"], {**web_env, "VZPANEL_DB_POOL": "1"}, web_user=True)
            for i in range(1, settings.TASK_WORKERS + 1):
                # Each worker serves every node's queue and follows nodes joining while it runs
                # (vzpanel.tasks.nodeworker): a job reaches its node through that node's agent.
                self.start(f"worker{i}", [sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker",
                                          "--worker-class", "vzpanel.tasks.nodeworker.NodesWorker",
                                          f"node:{settings.VZPANEL_NODE}", "--name",
                                          f"worker-{settings.VZPANEL_NODE}-{os.getpid()}-{i}",
                                          # RQ's scheduler runs jobs queued for later (webhook retries); one
                                          # worker of a queue holds its lock, the others stand by.
                                          "--with-scheduler"], web_env,
                           web_user=True)
            self.start("agent", [sys.executable, "-m", "vzpanel.agent", "--node", settings.VZPANEL_NODE], root_env,
                       web_user=False)
            # The console daemon attaches to VEs, so it runs as root too; the web process only relays to it.
            self.start("console", [sys.executable, str(settings.BASE_DIR / "manage.py"), "consoled",
                                   "--node", settings.VZPANEL_NODE], root_env, web_user=False)
            self.wait_for_port(host, port)
            if self.stopping:
                return
            shown = f"[{host}]" if ":" in host else host
            self.say(f"up at {scheme}://{shown}:{port}/ (Ctrl-C stops everything)")
            if scheme == "https":
                self.say(f"TLS certificate {cert}" + (" (self-signed: browsers ask you to accept it once)"
                                                      if not os.environ.get("VZPANEL_TLS_CERT") else ""))
                if http_port:
                    self.say(f"http://{shown}:{http_port}/ redirects to HTTPS")
            self.say(", ".join(f"{name} pid {p.pid}" for name, p in self.children.items()))
            self.loop(urls["panel"])
        finally:
            self.stop_all()

    # -- set-up ----------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.stdout.write(f"vzpanel: {text}")
        self.stdout.flush()

    def step(self, what: str, fn, *args):
        """Run one set-up step; a failure names the step and why, and stops what was started."""
        if self.stopping:
            raise CommandError("stopped by a signal while starting")
        try:
            return fn(*args)
        except CommandError as exc:
            raise CommandError(f"setting up {what} failed: {exc}") from None
        except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            raise CommandError(f"setting up {what} failed: {exc}") from None

    def prepare_users(self):
        self.web_user = self.redis_user = None
        if not self.as_root:
            self.say("not running as root: every process runs as the current user (development mode)")
            return
        self.web_user = self.system_user(settings.VZPANEL_WEB_USER, group=None, home=self.state / "data")
        self.web_gid = self.web_user.pw_gid
        self.redis_user = self.system_user(REDIS_USER, group=grp.getgrgid(self.web_gid).gr_name,
                                           home=self.state / "run" / "redis")

    def system_user(self, name: str, group: str | None, home: Path):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        if not shutil.which("useradd"):
            raise CommandError(f"user {name!r} does not exist and useradd is missing to create it")
        argv = ["useradd", "--system", "--home-dir", str(home), "--no-create-home", "--shell", "/usr/sbin/nologin"]
        argv += ["--gid", group] if group else ["--user-group"]
        run_checked([*argv, name])
        self.say(f"created system user {name}")
        return pwd.getpwnam(name)

    def prepare_state(self):
        """Make the state directory root's, with the web user's data below it; move an old layout in place."""
        if not self.as_root:
            for sub in ("", "data", "run", "secrets"):
                (self.state / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.key_file()
            return
        gid = self.web_gid
        self.state.parent.mkdir(parents=True, exist_ok=True)
        top = own_dir(self.state, 0, gid, 0o750)  # taken back from the web user if an old version gave it away
        try:
            self.adopt_old_layout(top)
            own_dir_at(top, "data", self.web_user.pw_uid, gid, 0o700)
            own_dir_at(top, "secrets", 0, gid, 0o750)
            run = own_dir_at(top, "run", 0, 0, 0o755)
            os.close(own_dir_at(run, "redis", self.redis_user.pw_uid, gid, 0o750))
            os.close(run)
        finally:
            os.close(top)
        self.key_file()

    def adopt_old_layout(self, top: int):
        """Before this version the web user owned the whole state directory: move its database into data/ and
        throw away what root must not trust (its run/ and redis/ directories, its copy of the secret key)."""
        names = set(os.listdir(top))
        if "db.sqlite3" in names and "data" not in names:
            os.mkdir("data", 0o700, dir_fd=top)
            for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"):
                if name in names:  # rename moves a planted link as it is, never what it points at
                    os.rename(name, f"data/{name}", src_dir_fd=top, dst_dir_fd=top)
            self.say("moved the database into data/ (the state directory now belongs to root)")
        for name in ("run", "redis", "secrets", "tls"):  # root's now: nothing the web user made there is kept
            if name in names and os.stat(name, dir_fd=top, follow_symlinks=False).st_uid != 0:
                remove_at(top, name)
        if "secret_key" in names:
            st = os.stat("secret_key", dir_fd=top, follow_symlinks=False)
            if st.st_uid != 0 or not stat.S_ISREG(st.st_mode):
                old = read_at(top, "secret_key") if stat.S_ISREG(st.st_mode) else ""
                os.unlink("secret_key", dir_fd=top)
                if old.strip():
                    write_at(top, "secret_key", old.strip() + "\n", 0, self.web_gid, 0o640)

    def host_names(self, host: str) -> list[str]:
        """The names the panel answers to (VZPANEL_ALLOWED_HOSTS, else this machine's names and the address it
        listens on; every address of the host when it listens on all), also the certificate's names."""
        if os.environ.get("VZPANEL_ALLOWED_HOSTS"):
            return [h.strip() for h in os.environ["VZPANEL_ALLOWED_HOSTS"].split(",") if h.strip()]
        names = list(settings.ALLOWED_HOSTS)
        if host in ("0.0.0.0", "::", "[::]"):
            import psutil

            for iface, addrs in psutil.net_if_addrs().items():
                if iface.startswith("vz"):
                    continue  # a VE's link: never a name of the panel
                names += [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        else:
            names.append(host.strip("[]"))
        return list(dict.fromkeys(f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names))

    def certificate(self, names: list[str]) -> tuple[Path, Path]:
        """The admin's certificate (VZPANEL_TLS_CERT and VZPANEL_TLS_KEY), else a self-signed one made once."""
        if os.environ.get("VZPANEL_TLS_CERT") or os.environ.get("VZPANEL_TLS_KEY"):
            cert, key = Path(os.environ.get("VZPANEL_TLS_CERT", "")), Path(os.environ.get("VZPANEL_TLS_KEY", ""))
            if not (cert.is_file() and key.is_file()):
                raise CommandError("VZPANEL_TLS_CERT and VZPANEL_TLS_KEY must both name readable files")
            return cert, key
        group = grp.getgrgid(self.web_gid).gr_name if self.web_user is not None else None
        try:
            return tls.ensure_certificate(self.state / "tls", [n.strip("[]") for n in names], group=group)
        except tls.TLSError as exc:
            raise CommandError(str(exc)) from None

    def key_file(self):
        if os.environ.get("VZPANEL_SECRET_KEY"):
            return
        key = self.state / "secret_key"
        if not key.exists():
            write_new(key, secrets.token_urlsafe(50) + "\n", os.geteuid(), self.gid_or_self(), 0o640)
            self.say(f"wrote a new secret key to {key}")

    def gid_or_self(self) -> int:
        return self.web_gid if self.web_user is not None else os.getegid()

    def redis_credentials(self) -> dict:
        """Passwords for the panel's and the node agent's Redis users, kept in root's secrets/ directory."""
        secrets_dir = self.state / "secrets"
        node = settings.VZPANEL_NODE
        uid = os.geteuid()  # root's files (the current user's in development mode)
        self.redis_pass = {
            "panel": secret_file(secrets_dir / "redis-panel", uid, self.gid_or_self(), 0o640),
            "agent": secret_file(secrets_dir / f"redis-agent-{node}", uid, os.getegid(), 0o600),
        }
        sock = self.state / "run" / "redis" / "redis.sock"
        return {"panel": f"unix://panel:{self.redis_pass['panel']}@{sock}",
                "agent": f"unix://agent-{node}:{self.redis_pass['agent']}@{sock}"}

    def joined_node_acls(self, local: str) -> list[str]:
        """ACL users of the nodes `manage.py node add` joined, then of those the Add node page left join
        requests for (root's secret wins; never the panel's own node): each reaches its own keys only."""
        secrets_dir = self.state / "secrets"
        names = [name for name in joined_nodes(secrets_dir) if name != local]
        lines = [agent_acl_line(name, sha256(secret_file(secret_path(secrets_dir, name), os.geteuid(),
                                                         os.getegid(), 0o600))) for name in names]
        return lines + [agent_acl_line(name, digest) for name, digest in join_requests(joins_dir(self.state)).items()
                        if name != local and name not in names]

    def redis_listen_lines(self) -> list[str]:
        """With --redis-listen ADDRESS:PORT, Redis also listens there (over TLS unless --no-tls) for remote nodes."""
        if not self.redis_listen:
            return []
        address, _, port = self.redis_listen.rpartition(":")
        if not address or not port.isdigit():
            raise CommandError(f"--redis-listen {self.redis_listen!r}: give ADDRESS:PORT")
        address = address.strip("[]")
        if self.no_tls:
            return [f"bind {address}", f"port {int(port)}", "protected-mode no"]
        group = grp.getgrgid(self.web_gid).gr_name if self.web_user is not None else None
        cert, key = tls.ensure_certificate(self.state / "redis-tls", [address], group=group)
        return [f"bind {address}", f"tls-port {int(port)}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                "tls-auth-clients no", "protected-mode no"]

    def start_redis(self):
        server = shutil.which("redis-server")
        if not server:
            raise CommandError("redis-server is not installed; install it (scripts/setup does) or set REDIS_URL")
        run_dir = self.state / "run"
        sock = run_dir / "redis" / "redis.sock"
        node = settings.VZPANEL_NODE
        conf = "\n".join([
            "port 0", f"unixsocket {sock}", "unixsocketperm 770", f"dir {run_dir / 'redis'}", 'save ""',
            "appendonly no", "daemonize no", "loglevel warning",
            # No default user: every client authenticates. Passwords appear here only as SHA-256 hashes.
            "user default off",
            f"user panel on #{sha256(self.redis_pass['panel'])} ~* &* +@all -@admin",
            # A node's agent reaches its own request and reply lists (and the console's channel layer) only.
            agent_acl_line(node, sha256(self.redis_pass["agent"])),
            *self.joined_node_acls(node), *self.redis_listen_lines(),
        ]) + "\n"
        write_new(run_dir / "redis.conf", conf, os.geteuid(), os.getegid(), 0o644, replace=True)
        argv = [server, str(run_dir / "redis.conf")]
        self.start("redis", argv, self.env(), user=self.redis_user, group=self.web_gid if self.as_root else None)
        import redis as redis_py

        client = redis_py.Redis(unix_socket_path=str(sock), username="panel", password=self.redis_pass["panel"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.stopping:
            with contextlib.suppress(redis_py.RedisError):
                if client.ping():
                    return
            if self.children["redis"].poll() is not None:
                break
            time.sleep(0.1)
        raise CommandError("the private redis-server did not start; see its messages above")

    def init_panel(self, redis_url: str):
        """Migrate the database and make the first admin, as the web user (root never opens its database)."""
        argv = [sys.executable, str(settings.BASE_DIR / "manage.py"), "initpanel"]
        kwargs = self.demote(self.web_user)
        proc = subprocess.run(argv, cwd=settings.BASE_DIR, env=self.env(REDIS_URL=redis_url), capture_output=True,
                              text=True, **kwargs)
        for line in proc.stdout.splitlines():
            self.say(line)
        if proc.returncode:
            raise CommandError(f"manage.py initpanel exited with status {proc.returncode}: "
                               f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")

    def check_web_user_can_run(self):
        if self.web_user is None:
            return
        try:
            probe = subprocess.run([sys.executable, "-c", "import daphne, django, vzpanel"], cwd=settings.BASE_DIR,
                                   capture_output=True, text=True, env=self.env(), **self.demote(self.web_user))
            lines = probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"]
            failure = lines[-1] if probe.returncode else ""
        except OSError as exc:
            failure = str(exc) or "cannot execute"
        if failure:
            raise CommandError(
                f"the web user {self.web_user.pw_name} cannot run {sys.executable} with the panel's code in "
                f"{settings.BASE_DIR}: {failure}. Make the interpreter, its libraries and the code readable to that "
                "user (for instance a virtualenv made with /usr/bin/python3 in a world-readable directory).")

    def env(self, drop=(), **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(VZPANEL_STATE=str(self.state), DJANGO_SETTINGS_MODULE="vzpanel.settings", PYTHONUNBUFFERED="1",
                   VZPANEL_NODE=settings.VZPANEL_NODE)
        env.update(extra)
        return env

    @staticmethod
    def demote(user, group: int | None = None) -> dict:
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": group if group is not None else user.pw_gid, "extra_groups": []}

    # -- children ------------------------------------------------------------------------------------

    def start(self, name, argv, env, *, web_user: bool = False, user=None, group: int | None = None):
        user = self.web_user if web_user else user
        kwargs = self.demote(user, group)
        if user is not None:
            env = {**env, "HOME": user.pw_dir}
        # Own process group: Ctrl-C in the terminal reaches us, and we stop the children in order.
        proc = subprocess.Popen(argv, cwd=settings.BASE_DIR, start_new_session=True, env=env, **kwargs)
        self.children[name] = proc
        return proc

    def wait_for_port(self, host, port):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stopping:
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    raise CommandError(f"{name} exited with status {proc.returncode} while starting")
            try:
                with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), 1):
                    return
            except OSError:
                time.sleep(0.2)
        if not self.stopping:
            raise CommandError(f"the web server did not listen on {host}:{port} within 60 s")

    def loop(self, redis_url: str):
        import redis as redis_py
        from rq import Queue

        from vzpanel.tasks import periodic as rounds

        queue = Queue(f"node:{settings.VZPANEL_NODE}", connection=redis_py.Redis.from_url(redis_url))
        next_reconcile = 0.0
        periodic: list = []  # the last reconcile and tick jobs: a new round waits until they have run
        next_metrics, metrics_job = 0.0, []  # usage samples for the graphs (vzpanel/metrics), their own clock
        next_status = time.monotonic() + 60
        while not self.stopping:
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    self.say(f"{name} (pid {proc.pid}) exited with status {proc.returncode}; stopping")
                    return
            now = time.monotonic()
            # Every node's rounds: its own queued here, the other nodes' by one job that lists them
            # (vzpanel.tasks.periodic; this process never opens the database).
            if now >= next_reconcile and not self.still_pending(periodic):
                next_reconcile = now + settings.RECONCILE_INTERVAL
                try:  # reconcile, the classroom tick, traffic, then alerts (after the states are stored)
                    periodic = [*rounds.enqueue_round(queue, "reconcile", settings.VZPANEL_NODE),
                                queue.enqueue(rounds.fan_out, "reconcile", settings.VZPANEL_NODE, result_ttl=0,
                                              failure_ttl=3600, job_timeout=120, description="other nodes' reconcile")]
                except Exception as exc:
                    self.say(f"could not queue reconcile: {exc}")
            if now >= next_metrics and not self.still_pending(metrics_job):
                next_metrics = now + settings.METRICS_INTERVAL
                try:  # usage samples for the graphs (vzpanel/metrics), at the front of the queue
                    metrics_job = [*rounds.enqueue_round(queue, "metrics", settings.VZPANEL_NODE),
                                   queue.enqueue(rounds.fan_out, "metrics", settings.VZPANEL_NODE, result_ttl=0,
                                                 failure_ttl=600, job_timeout=60, at_front=True,
                                                 description="other nodes' usage samples")]
                except Exception as exc:
                    self.say(f"could not queue the usage sample: {exc}")
            if now >= next_status:
                next_status = now + 60
                try:
                    queued = len(queue)
                except Exception:
                    queued = "?"
                self.say(f"status: {', '.join(self.children)} up; {queued} job(s) waiting on {queue.name}")
            time.sleep(0.2)

    @staticmethod
    def still_pending(jobs) -> bool:
        """Whether any of jobs is still queued or running (several workers must not reconcile at once)."""
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
        """Stop every process we started, by pid and process group: all but Redis at once, then Redis.

        Each gets SIGTERM (RQ workers finish their job's current step: a second SIGTERM ends the job), then
        SIGKILL to its whole process group after STOP_GRACE seconds, so nothing is left behind.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        rest = [name for name in self.children if name != "redis"]
        for group in (rest, ["redis"]):
            procs = {n: self.children[n] for n in group if n in self.children}
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            for name, proc in procs.items():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
                if proc.poll() is None and name.startswith("worker"):
                    proc.send_signal(signal.SIGTERM)  # RQ's cold shutdown: ends the running job too
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(2)
                # Whatever it left in its group (an RQ work horse, lxc-attach) goes too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                self.say(f"stopped {name} (pid {proc.pid})")


# --- files root writes, never through a link -------------------------------------------------------

def run_checked(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise CommandError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dir_flags() -> int:
    return os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def own_dir(path: Path, uid: int, gid: int, mode: int) -> int:
    """Open (making it if missing) directory path, not a link; give it uid, gid and mode; return its fd."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    fd = os.open(path, _dir_flags())
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    return fd


def own_dir_at(parent: int, name: str, uid: int, gid: int, mode: int) -> int:
    """own_dir for an entry of an open directory (a link or a file there is replaced by a directory)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            raise FileNotFoundError
    except FileNotFoundError:
        os.mkdir(name, mode, dir_fd=parent)
    fd = os.open(name, _dir_flags(), dir_fd=parent)
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    return fd


def remove_at(parent: int, name: str) -> None:
    """Remove an entry of an open directory, a whole tree included, without following links."""
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def read_at(parent: int, name: str, limit: int = 4096) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def write_at(parent: int, name: str, text: str, uid: int, gid: int, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_new(path: Path, text: str, uid: int, gid: int, mode: int, replace: bool = False) -> None:
    """Write a file in a directory root owns, through a temporary name (never through an existing link)."""
    parent = os.open(path.parent, _dir_flags())
    try:
        tmp = f".{path.name}.{secrets.token_hex(4)}"
        write_at(parent, tmp, text, uid, gid, mode)
        if not replace and os.path.lexists(path):
            os.unlink(tmp, dir_fd=parent)
            return
        os.rename(tmp, path.name, src_dir_fd=parent, dst_dir_fd=parent)
    finally:
        os.close(parent)


def secret_file(path: Path, uid: int, gid: int, mode: int) -> str:
    """Return the secret kept in path, making one first if there is none; keep its owner and mode right."""
    parent = os.open(path.parent, _dir_flags())
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            value = secrets.token_hex(24)
            write_at(parent, path.name, value + "\n", uid, gid, mode)
            return value
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CommandError(f"{path} is not a regular file")
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            value = os.read(fd, 256).decode().strip()
        finally:
            os.close(fd)
        if not value.isalnum():
            raise CommandError(f"{path} does not hold a password made by vzpanel; remove it to get a new one")
        return value
    finally:
        os.close(parent)
