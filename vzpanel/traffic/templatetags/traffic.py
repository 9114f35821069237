"""The traffic card of the VE page: ``{% load traffic %}{% traffic_card ve %}``."""

from django import template

from vzpanel.traffic import accounting, services

register = template.Library()


@register.inclusion_tag("traffic/_card.html")
def traffic_card(ve):
    return {"ve": ve, "t": services.summary(ve)}


@register.filter
def traffic_bytes(value) -> str:
    """Bytes in decimal units (the quota's): 1.25 GB."""
    try:
        return accounting.human_bytes(int(value))
    except (TypeError, ValueError):
        return "-"
