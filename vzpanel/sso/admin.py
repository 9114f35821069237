from django.contrib import admin

from .models import SSOIdentity


@admin.register(SSOIdentity)
class SSOIdentityAdmin(admin.ModelAdmin):
    list_display = ["user", "source", "subject", "created_at", "last_sign_in"]
    list_filter = ["source"]
    search_fields = ["user__username", "subject"]
    readonly_fields = ["created_at", "last_sign_in"]
