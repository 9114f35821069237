"""Send plain-HTTP requests to the HTTPS side of the same host, on the port `serve` serves TLS on."""

from django.conf import settings
from django.http import HttpResponsePermanentRedirect


class HTTPSRedirectMiddleware:
    """Redirect http://name:8000/path to https://name:<VZPANEL_HTTPS_PORT>/path (Django's own redirect keeps
    the HTTP port, or sends everyone to one fixed host name)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        port = settings.VZPANEL_HTTPS_PORT
        if port and not request.is_secure():
            host = request.get_host()  # checked against ALLOWED_HOSTS: a foreign name gets 400, not a redirect
            name = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
            if name.startswith("[") and "]:" in name:
                name = name.rsplit(":", 1)[0]
            netloc = name if port == 443 else f"{name}:{port}"
            return HttpResponsePermanentRedirect(f"https://{netloc}{request.get_full_path()}")
        return self.get_response(request)
