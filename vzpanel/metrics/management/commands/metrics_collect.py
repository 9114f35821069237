"""Take a usage sample of this node's VEs now (or every N seconds), as `manage.py serve` does every 10 s.

For hosts run by systemd (no `serve` loop): run it as the web user with the panel's environment, e.g. in a
service with ``manage.py metrics_collect --every 10``; the node agent does the sampling.
"""

import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Sample every VE of this node once through its agent and store it for the graphs."

    def add_arguments(self, parser):
        parser.add_argument("--node", default=settings.VZPANEL_NODE)
        parser.add_argument("--every", type=float, default=0, help="repeat every this many seconds (Ctrl-C stops)")

    def handle(self, *args, node, every, **options):
        from vzpanel.metrics.jobs import collect

        while True:
            started = time.monotonic()
            out = collect(node, interval=int(every) or None)
            self.stdout.write(", ".join(f"{k} {v}" for k, v in out.items()))
            if not every:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))
