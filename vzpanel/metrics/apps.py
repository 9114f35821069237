from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "vzpanel.metrics"
    label = "metrics"
    verbose_name = "Usage history"
    default_auto_field = "django.db.models.BigAutoField"
