"""The admins' pages for webhook endpoints and their delivery log (/billing/)."""

from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("webhooks/", views.endpoint_list, name="webhooks"),
    path("webhooks/<int:pk>/", views.endpoint_detail, name="webhook"),
    path("webhooks/<int:pk>/test/", views.endpoint_test, name="webhook-test"),
    path("webhooks/<int:pk>/delete/", views.endpoint_delete, name="webhook-delete"),
]
