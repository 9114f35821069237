from django.apps import AppConfig


class VesConfig(AppConfig):
    name = "vzpanel.ves"
    label = "ves"
