from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from vzpanel.accounts.views import AdminLoginView, LoginView, signin_code, signin_enrol

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="ves:list"), name="home"),
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
    path("api/", include("vzpanel.api.urls")),
    # The admin signs in through the panel's sign-in: the same lockout, the same two factors.
    path("django-admin/login/", AdminLoginView.as_view(), name="admin-login"),
    path("django-admin/", admin.site.urls),
]
