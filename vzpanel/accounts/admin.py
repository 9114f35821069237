from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import APIToken, SSHKey, User

admin.site.register(SSHKey)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "role", "plan", "teacher", "is_active"]
    list_filter = ["role", "plan", "is_active", "is_staff"]
    fieldsets = [*BaseUserAdmin.fieldsets, ("Panel", {"fields": ["role", "plan", "teacher"]})]
    add_fieldsets = [*BaseUserAdmin.add_fieldsets, ("Panel", {"fields": ["role", "plan", "teacher"]})]


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "scope", "expires_at", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]
    search_fields = ["name", "user__username", "prefix"]
