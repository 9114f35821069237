from django.urls import path

from . import views

app_name = "tasks"
urlpatterns = [
    path("", views.task_list, name="list"),
    path("<int:task_id>/", views.task_detail, name="detail"),
    path("<int:task_id>/panel/", views.task_panel, name="panel"),
    path("<int:task_id>/cancel/", views.task_cancel, name="cancel"),
]
