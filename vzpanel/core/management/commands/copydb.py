"""Move the panel's database to another one (SQLite to PostgreSQL, before a second node joins).

    manage.py copydb --to postgresql://vzpanel:secret@db.example/vzpanel

It builds the target's tables with the panel's migrations, copies every row (users with their password and
token hashes, plans, nodes, VEs, tasks, courses, audit, sessions) with Django's own serialiser, and checks
that every table holds as many rows as the source. The target must be empty: a copy never merges into a
database that is in use. Stop the panel first (``scripts/run`` prints how), so nothing changes during the
copy; then set DATABASE_URL to the target (``<state>/panel.env``) and start it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from vzpanel.lib import dburl

# Rows Django makes by itself from the code (and the migrations make on the target): copying them would
# clash with the target's own; natural keys point at them instead.
EXCLUDE = ["contenttypes", "auth.permission", "django_rq"]  # django_rq: a view of Redis, no table


def _env(url: str) -> dict:
    return {**os.environ, "DATABASE_URL": url, "VZPANEL_NO_DATABASE": ""}


def _manage(url: str, *args: str, what: str, stdout=None) -> subprocess.CompletedProcess:
    """Run manage.py against the database at url (a process of its own: Django binds one set of DATABASES)."""
    proc = subprocess.run([sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args], env=_env(url),
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise CommandError(f"{what} failed: {(proc.stderr or '').strip()[-800:] or 'no error output'}")
    return proc


def _counts(url: str) -> dict[str, int]:
    """Rows per table of every model, in the database at url."""
    code = ("import json; from django.apps import apps; "
            "print(json.dumps({m._meta.label: m._base_manager.count() for m in apps.get_models() "
            "if m._meta.managed and not m._meta.proxy}))")
    return json.loads(_manage(url, "shell", "--no-imports", "-c", code, what="counting rows").stdout)


def _source_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    raise CommandError("copydb copies from SQLite or from the database DATABASE_URL names")


class Command(BaseCommand):
    help = "Copy every row of the panel's database into another, empty database (SQLite to PostgreSQL)."

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, metavar="URL",
                            help="the target, e.g. postgresql://user:password@host/dbname")

    def handle(self, *args, to: str, **options):
        try:
            target = dburl.parse(to)
        except ValueError as e:
            raise CommandError(str(e)) from None
        source = _source_url()
        if dburl.parse(source) == target:
            raise CommandError("the target is the database the panel uses now")
        connections["default"].close()
        self.stdout.write("building the target's tables")
        _manage(to, "migrate", "--no-input", what="migrating the target")
        if any(_counts(to).get(label) for label in ("accounts.User", "ves.VE", "nodes.Node", "plans.Plan")):
            raise CommandError("the target already holds panel data; copydb copies into an empty database only")
        expected = _counts(source)
        state = Path(settings.STATE_DIR) / "data"
        state.mkdir(parents=True, exist_ok=True)
        # The dump holds password and token hashes: a private file in the state directory, removed at the end.
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=state, prefix=".copydb-") as dump:
            os.chmod(dump.name, 0o600)
            self.stdout.write(f"reading {sum(expected.values())} rows")
            _manage(source, "dumpdata", "--natural-foreign", "--natural-primary", "--all",
                    *[f"--exclude={e}" for e in EXCLUDE], what="reading the source", stdout=dump)
            dump.flush()
            self.stdout.write("writing them to the target")
            _manage(to, "loaddata", "--format=json", dump.name, what="writing the target")
        got = _counts(to)
        copied = {label for label in expected if label.split(".")[0] not in {e.split(".")[0] for e in EXCLUDE}
                  and label != "auth.Permission"}
        wrong = {label: (expected[label], got.get(label)) for label in copied if expected[label] != got.get(label)}
        if wrong:
            raise CommandError("the copy differs: " + ", ".join(f"{k}: {a} rows, target {b}"
                                                                for k, (a, b) in sorted(wrong.items())))
        self.stdout.write(self.style.SUCCESS(
            f"copied {sum(expected[label] for label in copied)} rows of {len(apps.get_models())} tables; "
            f"now set DATABASE_URL={to.split('@')[-1] if '@' in to else to} (with its credentials) and start "
            "the panel"))
