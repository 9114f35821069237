"""Helpers the benchmarks share (each script runs as `python bench/<name>.py`, so this imports as `common`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.05):
    """Poll ``predicate`` every ``interval`` seconds until it is true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def percentile(values, p):
    """The p-th percentile of ``values`` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def stop_process(proc, timeout: float = 30) -> None:
    """End a process this benchmark started: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


REPO = Path(__file__).resolve().parents[1]


class PanelStack:
    """A private panel for one benchmark run: a state dir under /var/tmp with its own Redis, SQLite
    database and processes (each logging to ``<name>.log`` there), all stopped by pid and removed by
    ``close``. Benchmarks subclass it and add what they measure."""

    def __init__(self, prefix: str, **env: str):
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        os.chmod(self.tmp, 0o711)  # an engine root below it must be reachable by the VEs' mapped root
        self.procs: dict[str, subprocess.Popen] = {}
        self.sock = self.tmp / "redis.sock"
        self.env = {
            **os.environ,
            "VZPANEL_STATE": str(self.tmp),
            "REDIS_URL": f"unix://{self.sock}",
            "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.sqlite3'}",
            "VZPANEL_SECRET_KEY": "bench-secret-key-not-for-production",
            "DJANGO_SETTINGS_MODULE": "vzpanel.settings",
            **env,
        }
        os.environ.update(self.env)
        self.port = 0

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = self.procs[name] = subprocess.Popen(argv, cwd=REPO, env={**self.env, **env}, stdout=log,
                                                   stderr=subprocess.STDOUT)
        return proc

    def stop(self, name: str) -> None:
        stop_process(self.procs.pop(name, None))

    def stop_all(self, keep: tuple[str, ...] = ()) -> None:
        """Stop the processes this run started, newest first, but those named in ``keep``."""
        for name in reversed(list(self.procs)):
            if name not in keep:
                self.stop(name)

    def start_database(self) -> None:
        """Start the private Redis, migrate the database and set Django up in this process."""
        self.spawn("redis", ["redis-server", "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
                             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])
        wait_for(self.sock.exists, 10, "redis")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=self.env, check=True)
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import django

        django.setup()

    def start_web(self) -> str:
        """Start daphne on a free port of 127.0.0.1; return its base address once it listens."""
        self.port = free_port()
        self.spawn("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                           "vzpanel.asgi:application"], VZPANEL_DB_POOL="1")  # as serve starts it

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_for(listening, 30, "daphne")
        return f"http://127.0.0.1:{self.port}"

    def print_logs(self, *names: str, lines: int = 25) -> None:
        """Print the last lines of the named processes' logs to stderr (after a failed run)."""
        for name in names:
            log = self.tmp / f"{name}.log"
            if log.exists():
                print(f"--- {name}.log (last lines)", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-lines:]), file=sys.stderr)

    def remove(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
