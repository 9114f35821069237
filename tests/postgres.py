"""A private PostgreSQL server for a test, from Debian's packages: its own data directory, socket and port,
run as the `postgres` user, stopped and removed at the end whatever happens."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def bindir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them per major version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, check=True,
                          **kw)


@contextlib.contextmanager
def private_postgres(host: str = "127.0.0.1", netns: str | None = None):
    """Yield ``(url, superuser_url)`` of a fresh server listening on host; ``netns`` runs it in a namespace."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup --test installs it)")
    pg = pwd.getpwnam("postgres")
    top = Path(tempfile.mkdtemp(prefix="vzpg-", dir="/var/tmp"))
    proc = None
    try:
        os.chown(top, pg.pw_uid, pg.pw_gid)
        password = secrets.token_urlsafe(16)
        pwfile = top / "pw"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
        _as_postgres([str(bins / "initdb"), "-D", str(top / "data"), "-U", "postgres", "--pwfile", str(pwfile),
                      "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        if host not in ("127.0.0.1", "::1", "localhost"):  # initdb lets in loopback only: the host's link too
            with open(top / "data" / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet scram-sha-256\n")
        port = _free_port(host) if netns is None else 5432
        argv = ["runuser", "-u", "postgres", "--", str(bins / "postgres"), "-D", str(top / "data"), "-k", str(top),
                "-h", host, "-p", str(port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        log = open(top / "server.log", "ab")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run([str(bins / "pg_isready"), "-q", "-h", str(top), "-p", str(port)])
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(top / 'server.log').read_text()[-800:]}")
            time.sleep(0.1)
        panel_pw = secrets.token_urlsafe(16)
        sql = (f"CREATE ROLE vzpanel LOGIN CREATEDB PASSWORD '{panel_pw}'; "
               "CREATE DATABASE vzpanel OWNER vzpanel;")
        for stmt in sql.split("; "):
            _as_postgres([str(bins / "psql"), "-h", str(top), "-p", str(port), "-U", "postgres", "-v",
                          "ON_ERROR_STOP=1", "-c", stmt], env={**os.environ, "PGPASSWORD": password})
        yield (f"postgresql://vzpanel:{panel_pw}@{host}:{port}/vzpanel",
               f"postgresql://postgres:{password}@{host}:{port}/postgres")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        shutil.rmtree(top, ignore_errors=True)
