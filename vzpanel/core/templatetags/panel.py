from django import template
from django.utils.http import urlencode

register = template.Library()

STATUS_CLASSES = {
    "running": "success",
    "completed": "success",
    "ok": "success",
    "stopped": "secondary",
    "creating": "info",
    "queued": "info",
    "missing": "warning",
    "rescue": "warning",
    "cancelled": "warning",
    "failed": "danger",
    "errored": "danger",
    "denied": "danger",
    "destroyed": "dark",
}


@register.filter
def status_class(value) -> str:
    """Return the Bootstrap colour for a VE, task or audit status."""
    return STATUS_CLASSES.get(str(value), "secondary")


@register.simple_tag(takes_context=True)
def query(context, **changes) -> str:
    """Return the current query string with changes applied (None drops a key)."""
    params = context["request"].GET.copy()
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = value
    return "?" + urlencode(sorted((k, v) for k, v in params.items()))


@register.filter
def megabytes(value) -> str:
    try:
        return f"{int(value) / 1024 / 1024:.1f} MB"
    except (TypeError, ValueError):
        return "-"
