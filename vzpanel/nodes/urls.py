from django.urls import path

from . import views

app_name = "nodes"
urlpatterns = [
    path("", views.node_list, name="list"),
    # before <name>: a node cannot be called "templates" here (its page would be this one)
    path("templates/", views.template_list, name="templates"),
    path("add/", views.node_add, name="add"),
    path("<str:name>/", views.node_detail, name="detail"),
    path("<str:name>/maintenance/", views.node_maintenance, name="maintenance"),
    path("<str:name>/push-template/", views.node_push_template, name="push_template"),
]
