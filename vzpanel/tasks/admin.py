from django.contrib import admin

from .models import Task


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "action", "ve", "user", "status", "progress", "error_ref", "created_at", "finished_at"]
    list_filter = ["status", "action", "node"]
    search_fields = ["=id", "error_ref", "ve__ctid", "user__username"]
    raw_id_fields = ["ve", "user"]
    list_select_related = ["ve", "user"]
