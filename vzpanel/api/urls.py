from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import DefaultRouter

from vzpanel.classroom.api import CourseViewSet

from . import views


class Anything:
    """Any rest of a path, line breaks included (a regex group flag would make the URLconf unreversible)."""

    regex = r"[\s\S]*"

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value


register_converter(Anything, "anything")

router = DefaultRouter()
router.register("ves", views.VEViewSet, basename="ve")
router.register("backups", views.BackupViewSet, basename="backup")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("templates", views.TemplateViewSet, basename="template")
router.register("audit", views.AuditViewSet, basename="audit")
router.register("classes", CourseViewSet, basename="class")
# Resellers (issue 15): their customers and quota, read-only (vzpanel/resellers/api.py).
from vzpanel.resellers.api import CustomerViewSet, ResellerViewSet  # noqa: E402

router.register("customers", CustomerViewSet, basename="customer")
router.register("resellers", ResellerViewSet, basename="reseller")
# Hosting (issue 15): a VE's addresses and SSH line, and the user's SSH keys (vzpanel/api/hosting.py).
from . import hosting  # noqa: E402

router.register(r"ves/(?P<ctid>\d+)/network", hosting.VENetworkViewSet, basename="ve-network")
router.register("ssh-keys", hosting.SSHKeyViewSet, basename="ssh-key")
# The per-VE firewall (issue 15, vzpanel/api/firewall.py).
from . import firewall  # noqa: E402

router.register(r"ves/(?P<ctid>\d+)/firewall", firewall.VEFirewallViewSet, basename="ve-firewall")
# A VE's monthly traffic (issue 15, vzpanel/api/traffic.py).
from . import traffic  # noqa: E402

router.register(r"ves/(?P<ctid>\d+)/traffic", traffic.VETrafficViewSet, basename="ve-traffic")

from vzpanel.alerts.api import AlertList  # noqa: E402

urlpatterns = [
    # The schema is for signed-in users (a session or a token), like the API it describes.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]), name="api-schema"),
    path("", include(router.urls)),
    path("v1/billing/", include("vzpanel.billing.api_urls")),  # billing systems (issue 15, vzpanel/billing/)
    path("alerts/", AlertList.as_view(), name="api-alerts"),  # alerts (issue 20, vzpanel/alerts/)
    # Anything else under /api/ (an id the routes cannot match, say) is a JSON 404 like every API error.
    path("<anything:rest>", views.NotFoundView.as_view(), name="api-not-found"),
]
