from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from vzpanel.accounts.views import LoginView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="ves:list"), name="home"),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", include("vzpanel.accounts.urls")),
    path("plans/", include("vzpanel.plans.urls")),
    path("ves/", include("vzpanel.ves.urls")),
    path("tasks/", include("vzpanel.tasks.urls")),
    path("classes/", include("vzpanel.classroom.urls")),
    path("audit/", include("vzpanel.audit.urls")),
    path("api/", include("vzpanel.api.urls")),
    path("django-admin/", admin.site.urls),
]
