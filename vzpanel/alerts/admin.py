from django.contrib import admin

from .models import Alert, AlertPreference, Thresholds


@admin.register(Thresholds)
class ThresholdsAdmin(admin.ModelAdmin):
    list_display = ("__str__", "memory_percent", "disk_percent")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("since", "kind", "ve", "node", "message", "resolved_at")
    list_filter = ("kind",)


admin.site.register(AlertPreference)
