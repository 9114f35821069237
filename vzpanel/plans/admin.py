from django.contrib import admin

from .models import Plan


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode"]
