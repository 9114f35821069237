"""The panel on PostgreSQL: `manage.py copydb` moves a one-node panel's SQLite database into an empty
PostgreSQL database (every row, checked), refuses a target in use or a bad URL, and the panel then serves
from PostgreSQL. PostgreSQL is Debian's, started by the test as a private server (tests/postgres.py)."""

import re
import subprocess
import sys

import pytest
import requests

from tests.panel.conftest import REPO, panel_env, start_daphne, stop_process
from tests.postgres import bindir, private_postgres

pytestmark = pytest.mark.skipif(bindir() is None, reason="PostgreSQL is not installed (scripts/setup --test)")

MAKE_DATA = """
from vzpanel.accounts.models import User
from vzpanel.nodes.models import Node
from vzpanel.plans.models import Plan
from vzpanel.ves.models import VE
plan = Plan.objects.create(name="small", ram_mb=256)
node = Node.objects.get_or_create(name="local")[0]
boss = User.objects.create_user("boss", password="pg-test-password-1", role="admin")
alice = User.objects.create_user("alice", password="pg-test-password-2", role="customer", plan=plan)
for ctid in range(101, 111):
    VE.objects.create(ctid=ctid, node=node, owner=alice, hostname=f"web{ctid}.example", ostemplate="tiny",
                      status="stopped", ip_addresses=[f"10.0.0.{ctid - 100}"])
"""


def manage(env, *args, check=True):
    proc = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def counts(env) -> str:
    return manage(env, "shell", "--no-imports", "-c", "from vzpanel.ves.models import VE; from vzpanel.accounts.models import User; "
                                      "print(VE.objects.count(), User.objects.count())").stdout.strip()


@pytest.fixture
def sqlite_panel(tmp_path, redis_url, panel_state):
    """A one-node panel's SQLite database with a plan, a node, two users and ten VEs."""
    db = tmp_path / "panel.sqlite3"
    env = panel_env(redis_url, panel_state, db)
    manage(env, "migrate", "--no-input")
    manage(env, "shell", "-c", MAKE_DATA)
    return env, db


def test_copydb_moves_every_row_to_postgresql_and_the_panel_serves_from_it(sqlite_panel, redis_url, panel_state):
    env, db = sqlite_panel
    with private_postgres() as (url, _):
        out = manage(env, "copydb", "--to", url).stdout
        assert "copied" in out
        pg_env = {**env, "DATABASE_URL": url}
        assert counts(pg_env) == counts(env) == "10 2"

        # A second copy would merge into a database in use: refused, the target unchanged.
        again = manage(env, "copydb", "--to", url, check=False)
        assert again.returncode != 0 and "already holds panel data" in again.stderr
        assert counts(pg_env) == "10 2"

        # The panel runs on the copy: the customer logs in with her old password and sees her VEs.
        proc, base = start_daphne(redis_url, panel_state, db, "web-pg.log", DATABASE_URL=url)
        try:
            s = requests.Session()
            page = s.get(f"{base}/login/", timeout=10)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            r = s.post(f"{base}/login/", data={"username": "alice", "password": "pg-test-password-2",
                                               "csrfmiddlewaretoken": token},
                       headers={"Origin": base, "Referer": f"{base}/login/"}, timeout=10, allow_redirects=False)
            assert r.status_code == 302, r.text[-500:]
            ves = s.get(f"{base}/ves/", timeout=10)
            assert ves.status_code == 200 and "web101.example" in ves.text and "web110.example" in ves.text
        finally:
            stop_process(proc)
            proc.log_file.close()


def test_copydb_refuses_a_bad_target_and_changes_nothing(sqlite_panel):
    env, _ = sqlite_panel
    for url, why in [("mysql://x@y/z", "unsupported scheme"), ("postgresql://u@127.0.0.1:1/", "no database name"),
                     ("postgresql://u:p@127.0.0.1:1/vz", "migrating the target failed")]:
        proc = manage(env, "copydb", "--to", url, check=False)
        assert proc.returncode != 0 and why in proc.stderr, (url, proc.stderr[-500:])
    assert counts(env) == "10 2"
