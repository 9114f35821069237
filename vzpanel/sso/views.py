"""The OpenID Connect pages; mozilla-django-oidc is imported only when a provider is configured."""

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect


def _oidc():
    if not getattr(settings, "SSO_OIDC", None):
        raise Http404("OpenID Connect sign-in is not configured")
    from . import oidc

    return oidc


def oidc_login(request):
    """Send the browser to the provider, or back to the login page if the provider cannot be reached."""
    oidc = _oidc()
    try:
        oidc.discovery(settings.SSO_OIDC["issuer"])
    except oidc.ProviderUnavailable as exc:
        messages.error(request, f"Sign-in with {oidc.label()} is unavailable right now ({exc}). Try again later.")
        return redirect("login")
    return oidc.LoginView.as_view()(request)


def oidc_callback(request):
    """Finish signing in with the code the provider sent back."""
    return _oidc().CallbackView.as_view()(request)
