"""Sign in against an LDAP directory (django-auth-ldap), with the panel role taken from group membership."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django_auth_ldap.backend import LDAPBackend as BaseLDAPBackend

from . import provision
from .conf import normalise_dn
from .models import SSOIdentity

LABEL = "directory (LDAP)"


class LDAPBackend(BaseLDAPBackend):
    """django-auth-ldap, but never over a local account, and with the role re-read at every sign-in."""

    def authenticate_ldap_user(self, ldap_user, password):
        request = ldap_user._request
        try:
            with transaction.atomic():
                user = super().authenticate_ldap_user(ldap_user, password)
                if user is not None:
                    provision.link(user, source=SSOIdentity.Source.LDAP, subject=self._subject(user.ldap_username),
                                   label=LABEL, request=request)
                return user
        except provision.Refused as exc:
            # Raised only after the directory accepted the password, so the message tells a stranger nothing.
            provision.refuse(request, exc, label=LABEL)
            raise

    def get_or_build_user(self, username, ldap_user):
        conf = settings.SSO_LDAP
        groups = {normalise_dn(dn) for dn in ldap_user.group_dns} if conf["group_roles"] else set()
        role = provision.map_role(groups, conf["group_roles"], conf["default_role"])
        user, identity = provision.find_user(
            source=SSOIdentity.Source.LDAP, subject=self._subject(username), username=self._subject(username),
            role=role, label=LABEL,
        )
        return user, identity is None

    @staticmethod
    def _subject(username: str) -> str:
        return username.strip().lower()
