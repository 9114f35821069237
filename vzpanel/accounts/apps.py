from django.apps import AppConfig
from django.core import checks


class AccountsConfig(AppConfig):
    name = "vzpanel.accounts"
    label = "accounts"

    def ready(self):
        import axes.signals  # noqa: F401 - axes' receivers first: the audit reads what they set on the request
        from django.contrib.auth.signals import user_login_failed

        from . import lockout

        user_login_failed.connect(lockout.record_failure, dispatch_uid="vzpanel.accounts.audit_failed_login")
        checks.register(check_signin_settings)


def check_signin_settings(app_configs=None, **kwargs):
    """Refuse unknown roles in VZPANEL_2FA_REQUIRED_ROLES and bad VZPANEL_TRUSTED_PROXIES entries."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from vzpanel.core.clientip import parse_networks

    from .models import User

    errors = []
    unknown = set(getattr(settings, "VZPANEL_2FA_REQUIRED_ROLES", ())) - set(User.Role.values)
    if unknown:
        errors.append(checks.Error(
            f"VZPANEL_2FA_REQUIRED_ROLES: unknown role(s) {', '.join(sorted(unknown))}; "
            f"the roles are {', '.join(User.Role.values)}", id="accounts.E001"))
    try:
        parse_networks(getattr(settings, "VZPANEL_TRUSTED_PROXIES", ()))
    except ImproperlyConfigured as exc:
        errors.append(checks.Error(str(exc), id="accounts.E002"))
    return errors
