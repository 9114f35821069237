from django.contrib import admin

from .models import VE


@admin.register(VE)
class VEAdmin(admin.ModelAdmin):
    list_display = ["ctid", "hostname", "status", "owner", "node", "ostemplate", "created_at"]
    list_filter = ["status", "node"]
    search_fields = ["=ctid", "hostname", "owner__username"]
    raw_id_fields = ["owner"]
    list_select_related = ["owner", "node"]
