from django.contrib import admin

from .models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "username", "action", "ctid", "ip", "result", "detail"]
    list_filter = ["result", "action"]
    search_fields = ["username", "action", "detail", "=ctid", "ip"]
    date_hierarchy = "at"

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
