from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("", views.account, name="index"),
    path("two-factor/setup/", views.two_factor_setup, name="2fa-setup"),
    path("two-factor/recovery-codes/", views.recovery_codes, name="2fa-recovery"),
    path("two-factor/disable/", views.two_factor_disable, name="2fa-disable"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(
            template_name="accounts/password.html", success_url="/ves/"
        ),
        name="password",
    ),
    path("users/", views.user_list, name="users"),
    path("users/new/", views.user_create, name="user-create"),
    path("users/<int:pk>/", views.user_edit, name="user-edit"),
]
