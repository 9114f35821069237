"""Brute-force protection on top of django-axes: limits, the lockout answer, and the audit trail.

Failures count per (user name, address) and per address, never per user name alone: an attacker can lock
a name out from their own address only, and its owner still signs in from anywhere else. The per-pair
limit is AXES_FAILURE_LIMIT; the per-address limit (for guessing many names, or API tokens, from one
place) is VZPANEL_LOGIN_FAILURES_PER_IP. A lock lasts AXES_COOLOFF_TIME after the last counted failure.
"""

from __future__ import annotations

import math
from datetime import timedelta

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Max, Sum
from django.http import JsonResponse
from django.shortcuts import render
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.core.clientip import client_ip

# Passed in the credentials of user_login_failed to say which door failed (the audit log shows it).
METHOD_KEY = "vzpanel_method"


def _sum(queryset) -> int:
    return queryset.aggregate(n=Sum("failures_since_start"))["n"] or 0


class PanelAxesHandler(AxesDatabaseHandler):
    """Axes' database handler with a limit per (user, address) and a larger one per address."""

    def get_failures(self, request, credentials: dict | None = None) -> int:
        """Return failures on the pair limit's scale: reaching AXES_FAILURE_LIMIT means locked."""
        limit = settings.AXES_FAILURE_LIMIT
        per_ip = max(1, settings.VZPANEL_LOGIN_FAILURES_PER_IP)
        recent = AccessAttempt.objects.filter(ip_address=request.axes_ip_address)
        if settings.AXES_COOLOFF_TIME is not None:
            recent = recent.filter(attempt_time__gte=request.axes_attempt_time - get_cool_off(request))
        username = get_client_username(request, credentials)
        pair = _sum(recent.filter(username=username)) if username else 0
        # ip * limit // per_ip reaches limit exactly when ip reaches per_ip.
        return max(pair, _sum(recent) * limit // per_ip)


def is_allowed(request, username: str | None, method: str) -> bool:
    """Return whether a sign-in attempt from request for username may be checked at all."""
    credentials = {"username": username, METHOD_KEY: method}
    if AxesProxyHandler.is_allowed(request, credentials):
        return True
    request.axes_locked_out = True
    request.axes_credentials = credentials
    return False


def seconds_locked(request) -> int:
    """Return an upper bound of the seconds until request's address may try again."""
    cool_off = get_cool_off(request) or timedelta(0)
    ip = getattr(request, "axes_ip_address", None) or client_ip(request)
    last = AccessAttempt.objects.filter(ip_address=ip).aggregate(t=Max("attempt_time"))["t"]
    if last is None:
        return 1
    return max(1, math.ceil((last + cool_off - timezone.now()).total_seconds()))


def lockout_response(request, original_response=None, credentials=None):
    """Answer a locked-out attempt: 429 with Retry-After; JSON under /api/, else a page saying why."""
    # (axes' async middleware passes credentials in place of original_response: both are unused here)
    wait = seconds_locked(request)
    minutes = max(1, math.ceil(wait / 60))
    text = (f"Too many failed sign-in attempts from your address. Try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}.")
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": text}, status=429)
    else:
        response = render(request, "accounts/locked_out.html", {"message": text, "minutes": minutes}, status=429)
    response["Retry-After"] = str(wait)
    return response


def record_failure(sender, credentials, request=None, **kwargs):
    """Audit a failed or refused sign-in with the client's real address (connected after axes' receiver)."""
    if request is None:
        return
    credentials = credentials or {}
    username = (credentials.get("username") or "")[:150]
    method = credentials.get(METHOD_KEY, "password")
    locked = getattr(request, "axes_locked_out", False)
    # axes counted this attempt only if it got past the lock check (then it set the running total).
    counted = getattr(request, "axes_failures_since_start", None) is not None
    if locked and not counted:
        action, detail = "login.blocked", f"{method}: refused, too many failures"
    else:
        action, detail = "login.failed", method
        if locked:
            detail += "; now locked out"
    audit.record(action, request=request, username=username, result="denied", detail=detail,
                 ip=client_ip(request))
