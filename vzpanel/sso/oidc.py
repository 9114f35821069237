"""Sign in through an OpenID Connect provider (mozilla-django-oidc), endpoints from its discovery document."""

from __future__ import annotations

import threading
import time

import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpResponseRedirect
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from vzpanel.audit import log as audit

from . import provision
from .models import SSOIdentity

DISCOVERY_TTL = 3600
_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_discovered: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be had or is not for the configured issuer."""


def label() -> str:
    return settings.SSO_OIDC["name"]


def discovery(issuer: str) -> dict:
    """Return the provider's discovery document, fetched at most once an hour."""
    with _lock:
        cached = _discovered.get(issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
    url = issuer + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
        doc = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"cannot read {url}: {exc}") from None
    if not isinstance(doc, dict) or str(doc.get("issuer", "")).rstrip("/") != issuer:
        raise ProviderUnavailable(f"{url} is for issuer {doc.get('issuer') if isinstance(doc, dict) else None!r}, not {issuer}")
    missing = [key for key in _ENDPOINTS.values() if not doc.get(key)]
    if missing:
        raise ProviderUnavailable(f"{url} lacks {', '.join(missing)}")
    with _lock:
        _discovered[issuer] = (time.monotonic() + DISCOVERY_TTL, doc)
    return doc


def oidc_setting(attr: str, *default):
    """Read a mozilla-django-oidc setting; the provider's endpoints come from its discovery document."""
    if attr in _ENDPOINTS:
        return discovery(settings.SSO_OIDC["issuer"])[_ENDPOINTS[attr]]
    return import_from_settings(attr, *default)


class OIDCBackend(OIDCAuthenticationBackend):
    """Authenticate the code flow's callback; the role comes from a claim, re-read at every sign-in."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args, **kwargs):
        # Django builds every backend for each password login too: read the provider's endpoints only when used.
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        # Only the callback passes a nonce; a password form with ?code=&state= in its URL must not get here.
        if request is None or not kwargs.get("nonce") or "password" in kwargs:
            return None
        super().__init__()
        return super().authenticate(request, **kwargs)

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        # mozilla-django-oidc checks neither; an ID token for another client or issuer is not ours.
        if str(payload.get("iss", "")).rstrip("/") != settings.SSO_OIDC["issuer"]:
            raise SuspiciousOperation("ID token from another issuer")
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token for another client")
        return payload

    def get_or_create_user(self, access_token, id_token, payload):
        conf = settings.SSO_OIDC
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not payload.get("sub") or str(userinfo.get("sub")) != str(payload["sub"]):
            raise SuspiciousOperation("userinfo is about another subject than the ID token")
        claims = {**payload, **userinfo}
        values = claims.get(conf["role_claim"]) or []
        if isinstance(values, str):
            values = [values]
        role = provision.map_role([str(v) for v in values], conf["claim_roles"], conf["default_role"])
        username = str(claims.get(conf["username_claim"]) or "").strip()
        subject = f"{conf['issuer']} {payload['sub']}"
        try:
            with transaction.atomic():
                user, _ = provision.find_user(
                    source=SSOIdentity.Source.OIDC, subject=subject, username=username, role=role, label=label()
                )
                for field, claim in (("email", "email"), ("first_name", "given_name"), ("last_name", "family_name")):
                    if isinstance(claims.get(claim), str):
                        setattr(user, field, claims[claim][:150])
                user.save()
                provision.link(user, source=SSOIdentity.Source.OIDC, subject=subject, label=label(),
                               request=self.request)
                return user
        except provision.Refused as exc:
            provision.refuse(self.request, exc, label=label())
            self.request.sso_refused = exc
            raise


class LoginView(OIDCAuthenticationRequestView):
    """Send the browser to the provider's authorization endpoint (state, nonce and PKCE in the session)."""

    get_settings = staticmethod(oidc_setting)


class CallbackView(OIDCAuthenticationCallbackView):
    """Finish the code flow: log the user in, or back to the login page saying why not."""

    get_settings = staticmethod(oidc_setting)

    def get(self, request):
        try:
            return super().get(request)
        except (requests.RequestException, SuspiciousOperation, ProviderUnavailable) as exc:
            self.failure_reason = str(exc)
            return self.login_failure()

    def login_success(self):
        from django.shortcuts import redirect

        from vzpanel.accounts import twofactor

        # The same second step as the password form: the provider's sign-in stands in for the password only.
        if twofactor.has_device(self.user) or twofactor.is_required(self.user):
            pending = twofactor.start_pending(self.request, self.user, self.user.backend, self.success_url)
            return redirect("login-enrol" if pending.enrol else "login-code")
        audit.record("login", request=self.request, user=self.user, detail=f"via {label()}")
        return super().login_success()

    def login_failure(self):
        refused = getattr(self.request, "sso_refused", None)
        if refused is None:
            error = self.request.GET.get("error", "")
            reason = f"{label()} said: {error}" if error else "it did not complete"
            messages.error(self.request, f"Sign-in with {label()} failed: {reason}. Try again, or ask an admin.")
        detail = f"via {label()}: " + (refused.message if refused else getattr(self, "failure_reason", "") or
                                       self.request.GET.get("error", "no user"))
        audit.record("login.failed", request=self.request, username=refused.username if refused else "",
                     result="denied", detail=detail)
        return HttpResponseRedirect(reverse("login"))
