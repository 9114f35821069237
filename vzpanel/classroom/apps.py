from django.apps import AppConfig


class ClassroomConfig(AppConfig):
    name = "vzpanel.classroom"
    label = "classroom"
    verbose_name = "Classrooms"
