"""Run the classroom tick now (or every N seconds): usage, lab schedule, idle policy. As root, like reconcile."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Sample the class VEs of this node, start/stop them for lab sessions and put idle ones to sleep."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="repeat every this many seconds (Ctrl-C stops)")

    def handle(self, *args, every, **options):
        from vzpanel.classroom.jobs import tick

        while True:
            counts = tick(settings.VZPANEL_NODE)
            self.stdout.write(", ".join(f"{k} {v}" for k, v in counts.items()))
            if not every:
                return
            time.sleep(every)
