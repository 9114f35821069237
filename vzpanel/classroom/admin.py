from django.contrib import admin

from .models import Course, LabSession, LoginLink, Membership


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user", "ve")
    fields = ("user", "role", "group", "display_name", "ve", "ssh_port", "asleep", "activity_at")
    readonly_fields = ("activity_at",)


@admin.register(Course)
class CourseAdmin(admin.ModelAdmin):
    list_display = ("name", "teacher", "status", "ostemplate", "plan", "max_ves", "ends_on")
    list_filter = ("status",)
    search_fields = ("name", "teacher__username")
    raw_id_fields = ("teacher", "image_ve")
    inlines = [MembershipInline]


@admin.register(LabSession)
class LabSessionAdmin(admin.ModelAdmin):
    list_display = ("course", "starts_at", "ends_at", "after", "started", "ended")


@admin.register(LoginLink)
class LoginLinkAdmin(admin.ModelAdmin):
    list_display = ("user", "course", "created_at", "expires_at", "used_at")
    readonly_fields = ("key_hash",)
