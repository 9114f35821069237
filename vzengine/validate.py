"""Parse and check user input; each function returns the clean value or raises InvalidInput."""

from __future__ import annotations

import re

from .errors import InvalidInput

CTID_MIN = 100
CTID_MAX = 999_999_999

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SNAPNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ctid(value: object) -> int:
    """Return a VE id as int: a whole number from 100 to 999999999."""
    s = str(value).strip()
    if not s.isdigit():
        raise InvalidInput(f"invalid VE id {value!r}: use a number from {CTID_MIN} to {CTID_MAX}")
    n = int(s)
    if not CTID_MIN <= n <= CTID_MAX:
        raise InvalidInput(f"invalid VE id {n}: use a number from {CTID_MIN} to {CTID_MAX}")
    return n


def hostname(value: str) -> str:
    """Return a valid hostname (RFC 1123 labels, 253 characters at most)."""
    s = str(value).strip().rstrip(".")
    if not s or len(s) > 253 or not all(_HOSTNAME_LABEL.match(p) for p in s.split(".")):
        raise InvalidInput(
            f"invalid hostname {value!r}: use letters, digits and '-' in dot-separated labels "
            "of up to 63 characters, not starting or ending with '-'"
        )
    return s


def template_name(value: str) -> str:
    s = str(value).strip()
    if not _TEMPLATE.match(s):
        raise InvalidInput(
            f"invalid template name {value!r}: use lower-case letters, digits, '.', '_' and '-'"
        )
    return s


def snapshot_name(value: str) -> str:
    s = str(value).strip()
    if not _SNAPNAME.match(s):
        raise InvalidInput(
            f"invalid snapshot name {value!r}: use letters, digits, '.', '_' and '-' (64 at most)"
        )
    return s


def username(value: str) -> str:
    s = str(value)
    if not _USERNAME.match(s):
        raise InvalidInput(f"invalid user name {value!r}")
    return s


def userpasswd(value: str) -> tuple[str, str]:
    """Parse 'user:password'."""
    user, sep, password = str(value).partition(":")
    if not sep or not password:
        raise InvalidInput("--userpasswd takes USER:PASSWORD, with a non-empty password")
    if any(c in password for c in "\n\r\0"):
        raise InvalidInput("the password must not contain line breaks or NUL characters")
    if len(password) > 256:
        raise InvalidInput("the password is longer than 256 characters")
    return username(user), password


def size(value: object, *, what: str = "size", minimum: int = 0, maximum: int = 1 << 60) -> int:
    """Parse a size like 512M, 5G, 1.5GiB or a plain number of bytes; return bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise InvalidInput(
                f"invalid {what} {value!r}: use a number with an optional unit K, M, G or T (e.g. 512M)"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < minimum:
        raise InvalidInput(f"invalid {what} {value!r}: must be at least {human_size(minimum)}")
    if n > maximum:
        raise InvalidInput(f"invalid {what} {value!r}: must be at most {human_size(maximum)}")
    return n


def human_size(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def boolean(value: object) -> bool:
    s = str(value).strip().lower()
    if s in ("yes", "y", "true", "on", "1"):
        return True
    if s in ("no", "n", "false", "off", "0"):
        return False
    raise InvalidInput(f"invalid yes/no value {value!r}")
