"""Input the VE services take from users, checked: host names and root passwords."""

import re

from .errors import InvalidRequest

HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def clean_hostname(value: str) -> str:
    """Return value as a valid host name, or raise InvalidRequest saying what is wrong."""
    value = (value or "").strip().lower().rstrip(".")
    if not HOSTNAME_RE.match(value):
        raise InvalidRequest(
            "A host name is letters, digits and hyphens, in dot-separated labels of at most 63 characters "
            "that do not start or end with a hyphen (e.g. web1 or web1.example.com)."
        )
    return value


def clean_password(value: str) -> str:
    if not value or len(value) < 8:
        raise InvalidRequest("The root password must be at least 8 characters long.")
    if len(value) > 128:
        raise InvalidRequest("The root password must be at most 128 characters long.")
    if any(c in value for c in "\n\r\0") or not value.isprintable():
        raise InvalidRequest("The root password may not contain line breaks or control characters.")
    return value
