from django.apps import AppConfig


class ClassroomConfig(AppConfig):
    name = "vzpanel.classroom"
    label = "classroom"
    verbose_name = "Classrooms"

    def ready(self):
        from vzpanel.ves import services as ve_services

        from .services import refuse_start_after_end

        ve_services.register_guard(refuse_start_after_end)
