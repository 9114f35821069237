from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import Http404


def admin_required(view):
    """Let panel admins in; everyone else gets a 404, as for anything they may not see."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_panel_admin:
            raise Http404("Not found.")
        return view(request, *args, **kwargs)

    return wrapper


def is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"
