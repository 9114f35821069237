"""WSGI entry point (no websockets; use asgi.py for the full panel)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vzpanel.settings")

application = get_wsgi_application()
