from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "vzpanel.tasks"
    label = "tasks"
