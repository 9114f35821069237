from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "vzpanel.core"
    label = "core"
