"""ASGI entry point: HTTP (with static files) and the websockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vzpanel.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from vzpanel.console.routing import websocket_urlpatterns as console_urls  # noqa: E402
from vzpanel.core.hosts import AllowedHostsOriginValidator  # noqa: E402 - reads ALLOWED_HOSTS at each handshake
from vzpanel.core.websocket import SameOriginMiddleware  # noqa: E402
from vzpanel.tasks.routing import websocket_urlpatterns as task_urls  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Same origin first: a page elsewhere must not ride on the user's session cookie.
        "websocket": SameOriginMiddleware(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(task_urls + console_urls)))
        ),
    }
)
