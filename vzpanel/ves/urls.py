from django.urls import path

from . import views

app_name = "ves"
urlpatterns = [
    path("", views.ve_list, name="list"),
    path("new/", views.ve_create, name="create"),
    path("bulk/", views.ve_bulk, name="bulk"),
    path("<int:ctid>/", views.ve_detail, name="detail"),
    path("<int:ctid>/status/", views.ve_status, name="status"),
    path("<int:ctid>/console/", views.ve_console, name="console"),
    path("<int:ctid>/apply-plan/", views.ve_apply_plan, name="apply-plan"),
    path(
        "<int:ctid>/<str:action>/",
        views.ve_action,
        name="action",
    ),
]
