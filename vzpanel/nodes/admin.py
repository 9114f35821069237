from django.contrib import admin

from .models import Node, Template


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "description", "last_seen_at"]


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "node", "built", "description", "updated_at"]
    list_filter = ["node", "built"]
