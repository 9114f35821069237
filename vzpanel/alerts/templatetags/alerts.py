"""The nav's alert badge: how many alerts the signed-in user may see are firing (one count query per page)."""

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def firing_alerts(context) -> int:
    user = getattr(context.get("request"), "user", None)
    if user is None or not user.is_authenticated:
        return 0
    from vzpanel.alerts.services import visible_alerts

    return visible_alerts(user).filter(resolved_at__isnull=True).count()
