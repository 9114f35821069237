from django.urls import path

from . import views

app_name = "metrics"
urlpatterns = [
    path("ves/<int:ctid>/", views.ve_graph, name="ve"),
    path("nodes/<str:name>/", views.node_graph, name="node"),
    path("classes/<int:pk>/", views.class_graph, name="class"),
]
