from django.apps import AppConfig


class ResellersConfig(AppConfig):
    name = "vzpanel.resellers"
    label = "resellers"
    verbose_name = "Resellers"

    def ready(self):
        from vzpanel.ves import services as ve_services
        from vzpanel.ves.models import register_ve_rule

        from . import services

        register_ve_rule(services.ve_rule)  # a reseller sees (and acts on) its customers' VEs
        ve_services.register_quota_check(services.check)  # every change that takes resources asks the quota
