"""The dashboard is a list of panels; other apps add theirs here instead of editing the dashboard.

A panel has a name, a template, the roles that see it and a function that returns its context (or None to
stay hidden for this request). Registering a panel under a name that exists replaces it: the built-in
"alerts" panel is an empty placeholder until the alerts app registers its own under that name::

    from vzpanel.dashboard.panels import Panel, register

    register(Panel("alerts", "alerts/_dashboard.html", recent_alerts, roles={"admin"}, order=50))

The context function is called with the request and must keep to a fixed number of queries (aggregate in
the database, no query per row): tests/panel/test_dashboard.py counts them as VEs grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.template.loader import render_to_string

ADMIN = "admin"  # panel admins (superusers and the admin role); other names are User.Role values


@dataclass(frozen=True)
class Panel:
    """One section of the dashboard."""

    name: str
    template: str
    context: Callable  # context(request) -> dict, or None to hide the panel for this request
    roles: frozenset | set | None = None  # None: everyone signed in
    order: int = 100
    wide: bool = False  # spans the page instead of half of it

    def shown_to(self, role: str) -> bool:
        return self.roles is None or role in self.roles


PANELS: dict[str, Panel] = {}


def register(panel: Panel) -> None:
    """Add panel to the dashboard, or replace the one registered under its name."""
    PANELS[panel.name] = panel


def role_of(user) -> str:
    """The dashboard role of user: "admin" for every panel admin, else their User.Role value."""
    return ADMIN if user.is_panel_admin else user.role


def render_panels(request) -> list[dict]:
    """The panels request.user sees, in order, each rendered: [{"name", "wide", "html"}]."""
    role = role_of(request.user)
    out = []
    for panel in sorted(PANELS.values(), key=lambda p: (p.order, p.name)):
        if not panel.shown_to(role):
            continue
        context = panel.context(request)
        if context is None:
            continue
        html = render_to_string(panel.template, {**context, "panel": panel}, request=request)
        out.append({"name": panel.name, "wide": panel.wide, "html": html})  # render_to_string: already safe
    return out
