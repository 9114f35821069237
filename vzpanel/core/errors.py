"""Django's error views, with the API's error shape under /api/: a client of the API gets JSON
(`{"detail": "..."}`), even for what Django refuses before any view runs (a body over the size limit)."""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views import defaults


def bad_request(request, exception=None):
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        detail = f"The request body is too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
    else:
        detail = "Bad request."
    return JsonResponse({"detail": detail}, status=400)
