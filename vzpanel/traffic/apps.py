from django.apps import AppConfig


class TrafficConfig(AppConfig):
    name = "vzpanel.traffic"
    label = "traffic"
    verbose_name = "Traffic"
