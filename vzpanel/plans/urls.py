from django.urls import path

from . import views

app_name = "plans"
urlpatterns = [
    path("", views.plan_list, name="list"),
    path("new/", views.plan_edit, name="create"),
    path("<int:pk>/", views.plan_edit, name="edit"),
]
