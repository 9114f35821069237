from django.contrib.auth.signals import user_login_failed
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from vzpanel.accounts import lockout
from vzpanel.accounts.models import APIToken
from vzpanel.audit import log as audit
from vzpanel.core.clientip import client_ip


class APITokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <key>` (or `Bearer <key>`) with a per-user API token."""

    keywords = ("token", "bearer")

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].decode(errors="replace").lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token <key>'.")
        # Failed tokens count per address, like failed passwords (django-axes, vzpanel/accounts/lockout.py).
        django_request = request._request
        if not lockout.is_allowed(django_request, None, "API token"):
            audit.record("login.blocked", request=django_request, result="denied",
                         detail="API token: refused, too many failures", ip=client_ip(django_request))
            raise exceptions.Throttled(wait=lockout.seconds_locked(django_request),
                                       detail="Too many failed API token attempts from your address.")
        token = APIToken.find(parts[1].decode(errors="replace"))
        if token is None or not token.user.is_active:
            user_login_failed.send(sender=__name__, request=django_request,
                                   credentials={"username": None, lockout.METHOD_KEY: "API token"})
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        if token.expired:
            raise exceptions.AuthenticationFailed(
                f"This API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; make a new one under API tokens.")
        if token.scope == "read" and request.method not in permissions.SAFE_METHODS:
            raise exceptions.PermissionDenied("This API token is read-only: it may read, not change anything.")
        APIToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request):
        return "Token"


class APITokenScheme(OpenApiAuthenticationExtension):
    target_class = APITokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "Token-based authentication: `Token <key>`"}
