from django.urls import path

from . import views

app_name = "nodes"
urlpatterns = [
    path("", views.node_list, name="list"),
    # before <name>: a node cannot be called "templates" here (its page would be this one)
    path("templates/", views.template_list, name="templates"),
    path("<str:name>/", views.node_detail, name="detail"),
]
