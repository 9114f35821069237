from django.contrib import admin

from .models import IPAddress, IPPool, Node, Template


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "description", "last_seen_at"]


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "node", "built", "description", "updated_at"]
    list_filter = ["node", "built"]


@admin.register(IPPool)
class IPPoolAdmin(admin.ModelAdmin):
    list_display = ["name", "node", "network", "kind", "gateway"]
    list_filter = ["node", "kind", "version"]


@admin.register(IPAddress)
class IPAddressAdmin(admin.ModelAdmin):
    list_display = ["address", "pool", "ve", "reverse_dns", "ssh_port"]
