"""Print every assigned address with its reverse-DNS name, for a DNS server's import."""

from django.core.management.base import BaseCommand

from vzpanel.nodes.models import IPAddress


class Command(BaseCommand):
    help = "Print 'ADDRESS NAME' for every address a VE holds that has a reverse-DNS name (--all: also unnamed)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="also addresses without a name")

    def handle(self, *args, **options):
        rows = IPAddress.objects.select_related("pool__node").order_by("pool__node__name", "address")
        for row in rows:
            if row.reverse_dns or options["all"]:
                self.stdout.write(f"{row.address} {row.reverse_dns or '-'}")
