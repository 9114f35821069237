from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "vzpanel.nodes"
    label = "nodes"

    def ready(self):
        from . import push

        push.register()
