from django.apps import AppConfig


class ClassroomConfig(AppConfig):
    name = "vzpanel.classroom"
    label = "classroom"
    verbose_name = "Classrooms"

    def ready(self):
        from vzpanel.nodes import pools
        from vzpanel.ves import services as ve_services

        from .models import Membership
        from .services import refuse_start_after_end

        ve_services.register_guard(refuse_start_after_end)
        # Students' SSH forwards hold host ports too: hosting picks around them, and they around hosting's.
        pools.SSH_PORT_HOLDERS.append(
            lambda: Membership.objects.filter(ssh_port__isnull=False).values_list("ssh_port", flat=True))
