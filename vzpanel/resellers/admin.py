from django.contrib import admin

from .models import ResellerQuota


@admin.register(ResellerQuota)
class ResellerQuotaAdmin(admin.ModelAdmin):
    list_display = ["reseller", "max_ves", "ram_mb", "disk_gb", "ipv4_addresses", "ipv6_addresses", "updated_at"]
    search_fields = ["reseller__username"]
