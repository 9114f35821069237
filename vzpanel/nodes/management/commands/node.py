"""`manage.py node add NAME` / `node remove NAME`: join a node to the panel, or take one away.

`add` makes the Node row and the node's own Redis password (root's secrets/ directory) and prints the command
to run on the new host; `manage.py serve` gives the node its ACL user on its next start. `remove` is refused
while the node holds VEs, and then changes nothing.
"""

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from vzpanel.nodes.join import JoinError, agent_command, check_name, secret_path
from vzpanel.nodes.management.commands.serve import secret_file
from vzpanel.nodes.models import Node
from vzpanel.ves.models import VE


class Command(BaseCommand):
    help = "Add a node to the panel (prints the command to run on it) or remove one without VEs."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["add", "remove"])
        parser.add_argument("name")
        parser.add_argument("--redis-host", default=os.environ.get("VZPANEL_REDIS_HOST", "PANEL-ADDRESS"),
                            help="address the new node reaches the panel's Redis on (serve --redis-listen)")
        parser.add_argument("--redis-port", type=int, default=int(os.environ.get("VZPANEL_REDIS_PORT", "6380")))
        parser.add_argument("--vz-root", default="/var/lib/vz", help="engine root on the new node")

    def handle(self, *args, action, name, **options):
        try:
            check_name(name)
            if action == "add":
                self.add(name, **options)
            else:
                self.remove(name)
        except JoinError as exc:
            raise CommandError(str(exc)) from exc

    def secrets_dir(self) -> Path:
        path = Path(settings.STATE_DIR) / "secrets"
        if not path.is_dir():
            raise CommandError(f"{path} does not exist: run `manage.py serve` once first (as root)")
        return path

    def add(self, name, redis_host, redis_port, vz_root, **_):
        secrets_dir = self.secrets_dir()
        password = secret_file(secret_path(secrets_dir, name), os.geteuid(), os.getegid(), 0o600)
        _node, created = Node.objects.get_or_create(name=name)
        url = f"redis://agent-{name}:{password}@{redis_host}:{redis_port}/0"
        self.stdout.write(f"node {name} {'added' if created else 'already known; its credentials are unchanged'}")
        self.stdout.write("restart `manage.py serve` so its Redis knows the node's user, then run on the new host "
                          "(as root, in a checkout of vzpanel):")
        self.stdout.write(agent_command(name, url, vz_root))

    def remove(self, name):
        with transaction.atomic():
            node = Node.objects.select_for_update().filter(name=name).first()
            if node is None:
                raise CommandError(f"there is no node {name!r}")
            live = VE.objects.filter(node=node).exclude(status=VE.Status.DESTROYED).count()
            if live:
                raise CommandError(f"node {name} still holds {live} VE(s): destroy or move them first; "
                                   "nothing was changed")
            node.delete()
        path = secret_path(Path(settings.STATE_DIR) / "secrets", name)
        if path.is_file():
            path.unlink()
        self.stdout.write(f"node {name} removed; restart `manage.py serve` to drop its Redis user")
