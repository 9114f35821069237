from django.contrib import admin

from .models import BillingCall, BillingService


@admin.register(BillingService)
class BillingServiceAdmin(admin.ModelAdmin):
    """Read-only: services change through the billing API only (so its idempotency records stay true)."""

    list_display = ("external_id", "customer", "ve", "plan", "status", "updated_at")
    list_filter = ("status",)
    search_fields = ("external_id", "customer__username", "customer__email")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(BillingCall)
class BillingCallAdmin(admin.ModelAdmin):
    list_display = ("service", "call", "request_id", "status_code", "user", "created_at")
    list_filter = ("call",)
    search_fields = ("service__external_id", "request_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
