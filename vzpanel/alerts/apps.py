from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "vzpanel.alerts"
    label = "alerts"
    verbose_name = "Alerts"

    def ready(self):
        from vzpanel.billing.models import EVENTS
        from vzpanel.dashboard.panels import Panel, register

        from .views import dashboard_context

        EVENTS.setdefault("alert.fired", "an alert fired (a VE near its limits, stopped on its own, a node down)")
        EVENTS.setdefault("alert.resolved", "an alert's condition went away")
        register(Panel("alerts", "alerts/_panel.html", dashboard_context, order=40, wide=True))
