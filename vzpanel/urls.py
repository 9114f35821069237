from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

from vzpanel.accounts.views import AdminLoginView, LoginView, signin_code, signin_enrol
from vzpanel.core.prometheus import metrics_view
from vzpanel.dashboard.views import dashboard

urlpatterns = [
    path("", dashboard, name="home"),
    path("login/", LoginView.as_view(), name="login"),
    path("login/code/", signin_code, name="login-code"),
    path("login/enrol/", signin_enrol, name="login-enrol"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", include("vzpanel.accounts.urls")),
    path("sso/", include("vzpanel.sso.urls")),
    path("plans/", include("vzpanel.plans.urls")),
    path("ves/", include("vzpanel.ves.urls")),
    path("tasks/", include("vzpanel.tasks.urls")),
    path("classes/", include("vzpanel.classroom.urls")),
    path("audit/", include("vzpanel.audit.urls")),
    path("billing/", include("vzpanel.billing.urls")),
    path("alerts/", include("vzpanel.alerts.urls")),
    path("metrics/", include("vzpanel.metrics.urls")),
    path("resellers/", include("vzpanel.resellers.urls")),
    path("nodes/", include("vzpanel.nodes.urls")),
    path("metrics", metrics_view, name="prometheus-metrics"),  # Prometheus; the graphs are under metrics/
    # before api/: the API's own URLconf answers anything else under /api/ with a JSON 404
    path("api/docs/", login_required(SpectacularSwaggerView.as_view(url_name="api-schema")), name="api-docs"),
    path("api/", include("vzpanel.api.urls")),
    # The admin signs in through the panel's sign-in: the same lockout, the same two factors.
    path("django-admin/login/", AdminLoginView.as_view(), name="admin-login"),
    path("django-admin/", admin.site.urls),
]

handler400 = "vzpanel.core.errors.bad_request"
