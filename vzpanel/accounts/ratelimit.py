"""Login rate limiting, counted from the audit log's failed logins."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from vzpanel.audit.models import AuditEntry


def blocked(ip: str | None, username: str) -> bool:
    """Return whether logins from ip, or for username, failed too often lately."""
    since = timezone.now() - timedelta(seconds=settings.LOGIN_WINDOW)
    failures = AuditEntry.objects.filter(action="login.failed", at__gte=since)
    if ip and failures.filter(ip=ip).count() >= settings.LOGIN_FAILURES_PER_IP:
        return True
    return bool(username) and failures.filter(username=username).count() >= settings.LOGIN_FAILURES_PER_USER
