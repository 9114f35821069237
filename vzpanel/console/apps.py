from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "vzpanel.console"
    label = "console"
    verbose_name = "web console"
