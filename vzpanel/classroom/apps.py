from django.apps import AppConfig


class ClassroomConfig(AppConfig):
    name = "vzpanel.classroom"
    label = "classroom"
    verbose_name = "Classrooms"

    def ready(self):
        from vzpanel.console import hooks as console_hooks
        from vzpanel.nodes import pools
        from vzpanel.tasks import actions
        from vzpanel.ves import services as ve_services

        from . import jobs, plans, services
        from .models import Membership
        from .services import refuse_start_after_end

        ve_services.register_guard(refuse_start_after_end)
        ve_services.register_plan_governor(plans)  # a course's plan sets its students' VEs' limits
        # A class VE the idle policy or lab schedule put to sleep wakes when its console opens.
        console_hooks.register_opening(services.wake_for_console)
        actions.register_parent_closer(jobs.close_course_parent)
        for name, handler in jobs.HANDLERS.items():  # the per-student actions, in the one registry
            actions.register(name, handler, label=f"{services.label(name)} (class)",
                             creates_ve=name == services.PROVISION)
        # Students' SSH forwards hold host ports too: hosting picks around them, and they around hosting's.
        pools.SSH_PORT_HOLDERS.append(
            lambda: Membership.objects.filter(ssh_port__isnull=False).values_list("ssh_port", flat=True))
