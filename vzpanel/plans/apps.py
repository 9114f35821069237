from django.apps import AppConfig


class PlansConfig(AppConfig):
    name = "vzpanel.plans"
    label = "plans"
