from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "vzpanel.audit"
    label = "audit"
