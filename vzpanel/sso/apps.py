from django.apps import AppConfig


class SSOConfig(AppConfig):
    name = "vzpanel.sso"
    label = "sso"
    verbose_name = "Single sign-on"
