from django.contrib import admin

from .models import TrafficMeter, TrafficMonth


@admin.register(TrafficMonth)
class TrafficMonthAdmin(admin.ModelAdmin):
    list_display = ["ve", "month", "bytes_in", "bytes_out", "quota_bytes", "action", "over_at"]
    list_filter = ["month", "action"]
    search_fields = ["=ve__ctid", "ve__hostname", "ve__owner__username"]
    raw_id_fields = ["ve"]
    list_select_related = ["ve"]


@admin.register(TrafficMeter)
class TrafficMeterAdmin(admin.ModelAdmin):
    list_display = ["ve", "read_at", "total_in", "total_out", "run", "enforced", "enforced_month"]
    list_filter = ["enforced"]
    search_fields = ["=ve__ctid"]
    raw_id_fields = ["ve"]
    list_select_related = ["ve"]
