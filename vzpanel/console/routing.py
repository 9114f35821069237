from django.urls import path

from .consumers import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/ves/<int:ctid>/console/", ConsoleConsumer.as_asgi()),
]
