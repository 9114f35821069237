from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "vzpanel.billing"
    label = "billing"
    verbose_name = "Billing and webhooks"

    def ready(self):
        from . import events

        events.connect()
