from django.conf import settings
from django.db import models

from .quota import Amounts


class ResellerQuota(models.Model):
    """What a reseller may hand out in all: the sum over its customers' live VEs of their plans' limits must
    stay within it (resellers.services checks every change against it). Set by admins only."""

    reseller = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reseller_quota",
                                    limit_choices_to={"role": "reseller"})
    max_ves = models.PositiveIntegerField("VEs", default=0, help_text="Live VEs of all its customers together.")
    ram_mb = models.PositiveIntegerField("RAM (MB)", default=0,
                                         help_text="The RAM of those VEs' plans, added up.")
    disk_gb = models.PositiveIntegerField("disk (GB)", default=0,
                                          help_text="The disk of those VEs' plans, added up.")
    ipv4_addresses = models.PositiveIntegerField("IPv4 addresses", default=0,
                                                 help_text="IPv4 addresses those VEs get from their plans or hold.")
    ipv6_addresses = models.PositiveIntegerField("IPv6 addresses", default=0,
                                                 help_text="IPv6 addresses those VEs get from their plans or hold.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "reseller quota"

    def __str__(self):
        return f"quota of {self.reseller}"

    def amounts(self) -> Amounts:
        return Amounts(ves=self.max_ves, ram_mb=self.ram_mb, disk_gb=self.disk_gb, ipv4=self.ipv4_addresses,
                       ipv6=self.ipv6_addresses)
