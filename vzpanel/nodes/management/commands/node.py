"""`manage.py node add NAME` / `node remove NAME`: join a node to the panel, or take one away.

`add` makes the Node row and the node's own Redis password (root's secrets/ directory) and prints the command
to run on the new host; `manage.py serve` gives the node its ACL user on its next start. `remove` is refused
while the node holds VEs, and then changes nothing.
"""

import os
import pwd
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import ProtectedError

from vzpanel.nodes.join import (
    JoinError,
    agent_url,
    check_name,
    join_steps,
    joins_dir,
    secret_path,
    withdraw_join,
)
from vzpanel.nodes.management.commands.serve import secret_file
from vzpanel.nodes.models import Node
from vzpanel.ves.models import VE


class Command(BaseCommand):
    help = "Add a node to the panel (prints the command to run on it) or remove one without VEs."

    def add_arguments(self, parser):
        # register/unregister: the database half of add/remove, run as the web user (root never opens its database).
        parser.add_argument("action", choices=["add", "remove", "register", "unregister"])
        parser.add_argument("name")
        parser.add_argument("--redis-host", default=os.environ.get("VZPANEL_REDIS_HOST", "PANEL-ADDRESS"),
                            help="address the new node reaches the panel's Redis on (serve --redis-listen)")
        parser.add_argument("--redis-port", type=int, default=int(os.environ.get("VZPANEL_REDIS_PORT", "6380")))
        parser.add_argument("--vz-root", default="/var/lib/vz", help="engine root on the new node")
        parser.add_argument("--no-tls", action="store_true",
                            help="the panel's Redis listens without TLS (serve --no-tls --redis-listen)")

    def handle(self, *args, action, name, **options):
        try:
            check_name(name)
            {"add": self.add, "remove": self.remove, "register": self.register,
             "unregister": self.unregister}[action](name, **options)
        except JoinError as exc:
            raise CommandError(str(exc)) from exc

    def secrets_dir(self) -> Path:
        path = Path(settings.STATE_DIR) / "secrets"
        if not path.is_dir():
            raise CommandError(f"{path} does not exist: run `manage.py serve` once first (as root)")
        return path

    def add(self, name, redis_host, redis_port, vz_root, no_tls=False, **_):
        secrets_dir = self.secrets_dir()
        created = self.as_web_user("register", name)
        password = secret_file(secret_path(secrets_dir, name), os.geteuid(), os.getegid(), 0o600)
        url = agent_url(name, password, redis_host, redis_port, tls=not no_tls)
        self.stdout.write(f"node {name} {'added' if created else 'already known; its credentials are unchanged'}")
        for line in join_steps(name, url, tls=not no_tls, vz_root=vz_root,
                               cert_path=Path(settings.STATE_DIR) / "redis-tls" / "cert.pem"):
            self.stdout.write(line)

    def remove(self, name, **_):
        if name == settings.VZPANEL_NODE:
            raise CommandError(f"{name} is this panel's own node (VZPANEL_NODE); it cannot be removed")
        path = secret_path(self.secrets_dir(), name)
        self.as_web_user("unregister", name)
        if path.is_file():
            path.unlink()
        self.stdout.write(f"node {name} removed; restart `manage.py serve` to drop its Redis user")

    def as_web_user(self, action: str, name: str) -> bool:
        """Run the database half as the web user when root (directly otherwise); True if it made something."""
        if os.geteuid() != 0:
            return getattr(self, action)(name)
        try:
            user = pwd.getpwnam(settings.VZPANEL_WEB_USER)
        except KeyError as exc:
            raise CommandError(f"the web user {settings.VZPANEL_WEB_USER} does not exist: run serve once") from exc
        proc = subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "node", action, name],
                              cwd=settings.BASE_DIR, capture_output=True, text=True, user=user.pw_uid,
                              group=user.pw_gid, extra_groups=[], env={**os.environ, "HOME": user.pw_dir})
        if proc.returncode:
            raise CommandError((proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                               .removeprefix("CommandError: "))
        return "created" in proc.stdout

    def register(self, name, **_) -> bool:
        _node, created = Node.objects.get_or_create(name=name)
        self.stdout.write("created" if created else "exists")
        return created

    def unregister(self, name, **_) -> bool:
        with transaction.atomic():
            node = Node.objects.select_for_update().filter(name=name).first()
            if node is None:
                raise CommandError(f"there is no node {name!r}")
            live = VE.objects.filter(node=node).exclude(status=VE.Status.DESTROYED).count()
            if live:
                raise CommandError(f"node {name} still holds {live} VE(s): destroy or move them first; "
                                   "nothing was changed")
            try:
                node.delete()
            except ProtectedError as exc:
                raise CommandError(f"node {name} keeps the records of destroyed VEs; it stays") from exc
            try:  # the join request the Add node page left, if any; last, so a refusal rolls the rest back
                withdraw_join(joins_dir(settings.STATE_DIR), name)
            except OSError as exc:
                raise CommandError(f"cannot remove node {name}'s join request: {exc}; nothing was changed") from exc
        return True
