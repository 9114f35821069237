from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "vzpanel.api"
    label = "api"
