from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from .panels import render_panels, role_of


@login_required
def dashboard(request):
    """The home page: the panels of the user's role (vzpanel.dashboard.panels)."""
    return render(request, "dashboard/dashboard.html", {"panels": render_panels(request),
                                                         "role": role_of(request.user)})
