from django.conf import settings
from django.core.management.base import BaseCommand

from vzpanel.nodes.reconcile import reconcile_node


class Command(BaseCommand):
    help = "Bring the panel in step with this node's engine now (run as root, like the node agent)."

    def add_arguments(self, parser):
        parser.add_argument("--node", default=settings.VZPANEL_NODE)

    def handle(self, *args, node, **options):
        counts = reconcile_node(node)
        self.stdout.write(", ".join(f"{k}: {v}" for k, v in counts.items()))
