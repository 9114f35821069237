"""Read the single sign-on environment into Django settings; nothing is imported while it is unset.

LDAP (on when VZPANEL_LDAP_URI is set):
  VZPANEL_LDAP_URI                  ldap://host or ldaps://host (several, space separated, are tried in turn)
  VZPANEL_LDAP_BIND_DN              account that searches for users (empty: anonymous search)
  VZPANEL_LDAP_BIND_PASSWORD        its password, or VZPANEL_LDAP_BIND_PASSWORD_FILE: a file holding it
  VZPANEL_LDAP_USER_SEARCH          base DN of the user search, e.g. ou=people,dc=example,dc=org
  VZPANEL_LDAP_USER_FILTER          default (uid=%(user)s)
  VZPANEL_LDAP_USER_DN_TEMPLATE     instead of a search: uid=%(user)s,ou=people,dc=example,dc=org
  VZPANEL_LDAP_GROUP_ROLES          cn=admins,ou=groups,dc=example,dc=org=admin;cn=teachers,...=teacher
  VZPANEL_LDAP_GROUP_SEARCH         base DN of the group search (default: the parent of the mapped groups)
  VZPANEL_LDAP_GROUP_TYPE           groupOfNames (default), groupOfUniqueNames or posixGroup
  VZPANEL_LDAP_DEFAULT_ROLE         role for a user in none of the groups (default: refuse them)
  VZPANEL_LDAP_START_TLS=1          StartTLS on ldap://; VZPANEL_LDAP_CA_FILE: CA certificates to trust
OpenID Connect (on when VZPANEL_OIDC_ISSUER is set):
  VZPANEL_OIDC_ISSUER               https://id.example.org/realms/school (its /.well-known/openid-configuration)
  VZPANEL_OIDC_CLIENT_ID            the panel's client id at the provider
  VZPANEL_OIDC_CLIENT_SECRET        its secret, or VZPANEL_OIDC_CLIENT_SECRET_FILE
  VZPANEL_OIDC_NAME                 the button says "Sign in with <name>" (default: the issuer's host name)
  VZPANEL_OIDC_SCOPES               default "openid email profile"
  VZPANEL_OIDC_USERNAME_CLAIM       default preferred_username
  VZPANEL_OIDC_ROLE_CLAIM           default groups (a string or a list of strings)
  VZPANEL_OIDC_CLAIM_ROLES          vz-admins=admin;vz-teachers=teacher;students=student
  VZPANEL_OIDC_DEFAULT_ROLE         role for a user with none of those values (default: refuse them)
  VZPANEL_OIDC_SIGN_ALGO            the ID token's algorithm (default RS256)
Mappings are tried in the order written; the first that matches gives the role.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

ROLES = ("admin", "customer", "teacher", "student")
LDAP_BACKEND = "vzpanel.sso.ldap_backend.LDAPBackend"
OIDC_BACKEND = "vzpanel.sso.oidc.OIDCBackend"


@dataclass
class SSOSettings:
    """Django settings to add, and the authentication backends to append."""

    settings: dict[str, object] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)


def from_env(env: Mapping[str, str] = os.environ) -> SSOSettings:
    """Return the settings for the single sign-on the environment asks for (none when it is unset)."""
    out = SSOSettings(settings={"SSO_LDAP": None, "SSO_OIDC": None})
    if env.get("VZPANEL_LDAP_URI", "").strip():
        out.settings.update(_ldap(env))
        out.backends.append(LDAP_BACKEND)
    if env.get("VZPANEL_OIDC_ISSUER", "").strip():
        out.settings.update(_oidc(env))
        out.backends.append(OIDC_BACKEND)
    return out


def parse_roles(name: str, value: str) -> list[tuple[str, str]]:
    """Parse "key=role;key=role" (the key may itself contain "=", as a DN does) into pairs, in order."""
    pairs = []
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, role = item.rpartition("=")
        key, role = key.strip(), role.strip().lower()
        if not sep or not key:
            raise ImproperlyConfigured(f"{name}: {item!r} is not <group>=<role>")
        if role not in ROLES:
            raise ImproperlyConfigured(f"{name}: unknown role {role!r} for {key}; use one of {', '.join(ROLES)}")
        pairs.append((key, role))
    return pairs


def _default_role(env: Mapping[str, str], name: str) -> str | None:
    role = env.get(name, "").strip().lower()
    if not role:
        return None
    if role not in ROLES:
        raise ImproperlyConfigured(f"{name}: unknown role {role!r}; use one of {', '.join(ROLES)}")
    if role == "admin":
        raise ImproperlyConfigured(f"{name}: admin cannot be a default role; map an admin group instead")
    return role


def _secret(env: Mapping[str, str], name: str) -> str:
    """Return VAR, or the first line of the file VAR_FILE names."""
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text().splitlines()[0] if Path(path).stat().st_size else ""
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return env.get(name, "")


def _ldap(env: Mapping[str, str]) -> dict[str, object]:
    import ldap
    import ldap.dn
    from django_auth_ldap.config import GroupOfNamesType, GroupOfUniqueNamesType, LDAPSearch, PosixGroupType

    def dn(name: str, value: str) -> str:
        if not ldap.dn.is_dn(value):
            raise ImproperlyConfigured(f"{name}: {value!r} is not a distinguished name")
        return normalise_dn(value)

    uri = env["VZPANEL_LDAP_URI"].strip()
    for one in uri.split():
        if urlsplit(one).scheme not in ("ldap", "ldaps"):
            raise ImproperlyConfigured(f"VZPANEL_LDAP_URI: {one!r} is not an ldap:// or ldaps:// address")
    out: dict[str, object] = {
        "AUTH_LDAP_SERVER_URI": uri,
        "AUTH_LDAP_BIND_DN": env.get("VZPANEL_LDAP_BIND_DN", "").strip(),
        "AUTH_LDAP_BIND_PASSWORD": _secret(env, "VZPANEL_LDAP_BIND_PASSWORD"),
        "AUTH_LDAP_USER_ATTR_MAP": {"first_name": "givenName", "last_name": "sn", "email": "mail"},
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        # Roles come from the directory at every sign-in: a cached membership would outlive a removal.
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
        "AUTH_LDAP_START_TLS": env.get("VZPANEL_LDAP_START_TLS", "") == "1",
        "AUTH_LDAP_CONNECTION_OPTIONS": {ldap.OPT_NETWORK_TIMEOUT: 5, ldap.OPT_TIMEOUT: 10, ldap.OPT_REFERRALS: 0},
    }
    ca_file = env.get("VZPANEL_LDAP_CA_FILE", "").strip()
    if ca_file:
        if not Path(ca_file).is_file():
            raise ImproperlyConfigured(f"VZPANEL_LDAP_CA_FILE: {ca_file} is not a file")
        out["AUTH_LDAP_GLOBAL_OPTIONS"] = {ldap.OPT_X_TLS_CACERTFILE: ca_file}

    template = env.get("VZPANEL_LDAP_USER_DN_TEMPLATE", "").strip()
    base = env.get("VZPANEL_LDAP_USER_SEARCH", "").strip()
    if template:
        out["AUTH_LDAP_USER_DN_TEMPLATE"] = template
    elif base:
        user_filter = env.get("VZPANEL_LDAP_USER_FILTER", "").strip() or "(uid=%(user)s)"
        if "%(user)s" not in user_filter:
            raise ImproperlyConfigured(f"VZPANEL_LDAP_USER_FILTER: {user_filter!r} must contain %(user)s")
        out["AUTH_LDAP_USER_SEARCH"] = LDAPSearch(
            dn("VZPANEL_LDAP_USER_SEARCH", base), ldap.SCOPE_SUBTREE, user_filter
        )
    else:
        raise ImproperlyConfigured("VZPANEL_LDAP_URI is set: set VZPANEL_LDAP_USER_SEARCH or VZPANEL_LDAP_USER_DN_TEMPLATE too")

    group_roles = [
        (dn("VZPANEL_LDAP_GROUP_ROLES", group), role)
        for group, role in parse_roles("VZPANEL_LDAP_GROUP_ROLES", env.get("VZPANEL_LDAP_GROUP_ROLES", ""))
    ]
    default_role = _default_role(env, "VZPANEL_LDAP_DEFAULT_ROLE")
    if not group_roles and default_role is None:
        raise ImproperlyConfigured(
            "VZPANEL_LDAP_URI is set: set VZPANEL_LDAP_GROUP_ROLES (or VZPANEL_LDAP_DEFAULT_ROLE) to give users a role"
        )
    types = {
        "groupofnames": (GroupOfNamesType, "groupOfNames"),
        "groupofuniquenames": (GroupOfUniqueNamesType, "groupOfUniqueNames"),
        "posixgroup": (PosixGroupType, "posixGroup"),
    }
    kind = env.get("VZPANEL_LDAP_GROUP_TYPE", "").strip() or "groupOfNames"
    if kind.lower() not in types:
        raise ImproperlyConfigured(f"VZPANEL_LDAP_GROUP_TYPE: {kind!r} is not groupOfNames, groupOfUniqueNames or posixGroup")
    group_type, object_class = types[kind.lower()]
    group_base = env.get("VZPANEL_LDAP_GROUP_SEARCH", "").strip()
    if group_base:
        group_base = dn("VZPANEL_LDAP_GROUP_SEARCH", group_base)
    elif group_roles:
        group_base = common_parent([group for group, _ in group_roles])
    if group_base:
        out["AUTH_LDAP_GROUP_TYPE"] = group_type()
        out["AUTH_LDAP_GROUP_SEARCH"] = LDAPSearch(group_base, ldap.SCOPE_SUBTREE, f"(objectClass={object_class})")
    out["SSO_LDAP"] = {"group_roles": group_roles, "default_role": default_role}
    return out


def normalise_dn(value: str) -> str:
    """Return a DN in one canonical spelling (lower case, no spaces around separators)."""
    import ldap.dn

    return ldap.dn.dn2str(ldap.dn.str2dn(value)).lower()


def common_parent(dns: list[str]) -> str:
    """Return the deepest DN that holds every one of dns (their parents, when there is one)."""
    import ldap.dn

    parents = [ldap.dn.str2dn(d)[1:] for d in dns]
    common = parents[0]
    for other in parents[1:]:
        n = 0
        while n < min(len(common), len(other)) and common[-1 - n] == other[-1 - n]:
            n += 1
        common = common[len(common) - n:]
    return ldap.dn.dn2str(common)


def _oidc(env: Mapping[str, str]) -> dict[str, object]:
    issuer = env["VZPANEL_OIDC_ISSUER"].strip().rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ImproperlyConfigured(f"VZPANEL_OIDC_ISSUER: {issuer!r} is not an https:// address")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ImproperlyConfigured(f"VZPANEL_OIDC_ISSUER: {issuer!r} must use https (http only on localhost)")
    client_id = env.get("VZPANEL_OIDC_CLIENT_ID", "").strip()
    secret = _secret(env, "VZPANEL_OIDC_CLIENT_SECRET")
    if not client_id or not secret:
        raise ImproperlyConfigured(
            "VZPANEL_OIDC_ISSUER is set: set VZPANEL_OIDC_CLIENT_ID and VZPANEL_OIDC_CLIENT_SECRET (or _FILE) too"
        )
    claim_roles = parse_roles("VZPANEL_OIDC_CLAIM_ROLES", env.get("VZPANEL_OIDC_CLAIM_ROLES", ""))
    default_role = _default_role(env, "VZPANEL_OIDC_DEFAULT_ROLE")
    if not claim_roles and default_role is None:
        raise ImproperlyConfigured(
            "VZPANEL_OIDC_ISSUER is set: set VZPANEL_OIDC_CLAIM_ROLES (or VZPANEL_OIDC_DEFAULT_ROLE) to give users a role"
        )
    return {
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": secret,
        "OIDC_RP_SIGN_ALGO": env.get("VZPANEL_OIDC_SIGN_ALGO", "").strip() or "RS256",
        "OIDC_RP_SCOPES": env.get("VZPANEL_OIDC_SCOPES", "").strip() or "openid email profile",
        "OIDC_USE_PKCE": True,
        "OIDC_TIMEOUT": 10,
        "OIDC_AUTHENTICATION_CALLBACK_URL": "sso:oidc-callback",
        "SSO_OIDC": {
            "issuer": issuer,
            "name": env.get("VZPANEL_OIDC_NAME", "").strip() or parts.hostname,
            "username_claim": env.get("VZPANEL_OIDC_USERNAME_CLAIM", "").strip() or "preferred_username",
            "role_claim": env.get("VZPANEL_OIDC_ROLE_CLAIM", "").strip() or "groups",
            "claim_roles": claim_roles,
            "default_role": default_role,
        },
    }


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
