from django import template
from django.conf import settings

register = template.Library()


@register.inclusion_tag("sso/buttons.html", takes_context=True)
def sso_buttons(context):
    """Render the "Sign in with <provider>" button when OpenID Connect is configured, else nothing."""
    oidc = getattr(settings, "SSO_OIDC", None)
    return {"oidc_name": oidc["name"] if oidc else "", "next": context.get("next", "")}
