from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
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
