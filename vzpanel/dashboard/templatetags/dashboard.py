"""Filters of the dashboard and node pages, and the hooks where the metrics app's graphs go (vzpanel/metrics):
each renders nothing while that app, its partial or its URLs are not installed."""

from django import template
from django.template.loader import get_template
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

register = template.Library()

GRAPHS_TEMPLATE = "metrics/_graphs.html"
SPARKLINES = 12  # VEs of a list that get one (each fetches its own hour of data)


@register.filter
def human_bytes(value) -> str:
    """Bytes as KiB/MiB/GiB (vzpanel.ves.views.human_bytes); a dash when unknown."""
    from vzpanel.ves.views import human_bytes as fmt

    return "\u2013" if value is None or value == "" else fmt(value)


def metrics_url(kind: str, key) -> str | None:
    """The metrics app's JSON endpoint of a VE ("ve"), node ("node") or class ("class"), or None without it."""
    try:
        return reverse(f"metrics:{kind}", args=[key])
    except NoReverseMatch:
        return None


@register.simple_tag(takes_context=True)
def graphs(context, kind: str, key, title: str = "") -> str:
    """The metrics app's usage graphs of one VE, node or class (templates/metrics/_graphs.html, once per
    page), or "" while that app is not installed."""
    url = metrics_url(kind, key)
    if url is None:
        return ""
    try:
        tpl = get_template(GRAPHS_TEMPLATE)
    except template.TemplateDoesNotExist:
        return ""
    return tpl.render({"metrics_url": url, "metrics_title": title}, context.get("request"))


@register.simple_tag
def sparkline(ve, index: int = 1) -> str:
    """A placeholder static/vzpanel/sparklines.js fills with the VE's last hour of CPU and memory (the first
    SPARKLINES rows of a list only), or "" without the metrics app."""
    url = metrics_url("ve", ve.ctid) if index <= SPARKLINES else None
    if url is None:
        return ""
    return format_html('<span class="vz-sparkline d-inline-block align-middle ms-1" data-sparkline="{}" '
                       'data-ctid="{}"></span>', url, ve.ctid)
