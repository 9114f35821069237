"""Write audit entries."""

from .models import AuditEntry


def client_ip(request) -> str | None:
    """Return the address the request came from (the ASGI server's peer)."""
    return request.META.get("REMOTE_ADDR") or None if request is not None else None


def record(action: str, *, user=None, request=None, ve=None, task=None, result="ok", detail="", username="",
           ip=None):
    """Add one audit entry; user and address come from request when given (or ip, e.g. a websocket's peer)."""
    if request is not None and user is None and request.user.is_authenticated:
        user = request.user
    return AuditEntry.objects.create(
        action=action,
        user=user if user is not None and user.pk else None,
        username=username or (user.get_username() if user is not None else ""),
        ve=ve,
        ctid=ve.ctid if ve is not None else None,
        ip=ip or client_ip(request),
        task=task,
        result=result,
        detail=detail[:500],
    )


def task_finished(task):
    """Carry a task's final result onto the audit entries that queued it."""
    AuditEntry.objects.filter(task=task).update(result=task.status)
