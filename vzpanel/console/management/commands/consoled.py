"""Run the console daemon of this node (as root, next to the RQ worker): `manage.py consoled`."""

import asyncio
import logging
import os

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Serve the web console of this node's VEs: ptys into the VEs (lxc-attach, so as root), relayed "
        "through the channel layer on channel console.<node>. `serve` starts it; SIGTERM stops it and ends "
        "its sessions."
    )

    def add_arguments(self, parser):
        parser.add_argument("--node", default=settings.VZPANEL_NODE, help="node name (default VZPANEL_NODE)")
        parser.add_argument("--linger", type=float, default=settings.CONSOLE_LINGER,
                            help="seconds a session with nobody watching survives (default %(default)s)")
        parser.add_argument("--idle-timeout", type=float, default=settings.CONSOLE_IDLE_TIMEOUT,
                            help="seconds without input after which a session ends (default %(default)s)")

    def handle(self, *args, node, linger, idle_timeout, **options):
        from vzpanel.agent.console import serve

        logging.getLogger("vzpanel.console").setLevel(logging.INFO if options["verbosity"] > 1 else logging.WARNING)
        if os.geteuid() != 0:
            self.stderr.write("consoled: not running as root, so attaching to VEs will fail (development mode?)")
        asyncio.run(serve(node, linger=linger, idle_timeout=idle_timeout, scrollback=settings.CONSOLE_SCROLLBACK))
