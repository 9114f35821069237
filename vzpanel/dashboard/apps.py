from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "vzpanel.dashboard"
    label = "dashboard"
    verbose_name = "Dashboard"

    def ready(self):
        from . import builtin

        builtin.register_all()
