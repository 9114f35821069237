from django.conf import settings
from django.core.management.base import BaseCommand

from vzpanel.traffic.jobs import meter_node


class Command(BaseCommand):
    help = ("Read this node's traffic counters now and hold its VEs to their monthly quotas (as the web user, with "
            "the panel's environment; it asks the agent).")

    def add_arguments(self, parser):
        parser.add_argument("--node", default=settings.VZPANEL_NODE)

    def handle(self, *args, node, **options):
        counts = meter_node(node)
        self.stdout.write(", ".join(f"{k}: {v}" for k, v in counts.items()))
