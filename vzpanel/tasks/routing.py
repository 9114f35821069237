from django.urls import path

from .consumers import TaskConsumer, VEConsumer

websocket_urlpatterns = [
    path("ws/tasks/<int:task_id>/", TaskConsumer.as_asgi()),
    path("ws/ves/<int:ctid>/", VEConsumer.as_asgi()),
]
