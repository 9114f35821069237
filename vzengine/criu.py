"""Find CRIU and check that it is new enough to checkpoint VEs on this kernel.

LXC's ``lxc-checkpoint`` runs ``criu`` by name, so what matters is the ``criu`` found on PATH:
Debian 12's own package (3.17) fails on current kernels and 4.1 cannot dump TCP sockets on
kernels from 6.16, so 4.2 is the minimum. ``scripts/install-criu`` provides it (the
distribution's package where new enough, else a private Debian 13 tree and a wrapper).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

from .errors import StateError, Unsupported
from .run import which

MIN_VERSION = (4, 2)
# CRIU's config file is read one line at a time and split into words at white space; '#' starts a
# comment, '"' a quoted word, and option values have their own separators ("mnt[KEY]:VALUE",
# commas). A word made only of these characters means the same to every one of those parsers.
WORD = re.compile(r"[A-Za-z0-9._/+@-]+")
# The options the engine writes, and the shape of their values: nothing else reaches CRIU.
OPTIONS = {"external": re.compile(r"mnt\[[A-Za-z0-9._/+@-]+\]:[A-Za-z0-9._/+@-]+")}
MAX_WORD = 1024
INSTALL_HINT = "run scripts/install-criu (as root) to install CRIU 4.2 or newer"


@functools.cache
def _probe(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def find() -> str | None:
    """Path of the ``criu`` that LXC will run, or None."""
    return which("criu")


def version() -> tuple[int, ...] | None:
    """Version of that criu as a tuple, or None when it is missing or does not answer."""
    path = find()
    return _probe(path) if path else None


def version_string() -> str:
    v = version()
    return ".".join(map(str, v)) if v else ""


def require() -> str:
    """Return the criu path, or raise Unsupported saying how to get a usable one."""
    path = find()
    if path is None:
        raise Unsupported(f"checkpointing needs CRIU, which is not installed: {INSTALL_HINT}")
    v = _probe(path)
    if v is None:
        raise Unsupported(f"{path} does not run (criu --version failed): {INSTALL_HINT}")
    if v < MIN_VERSION:
        have = ".".join(map(str, v))
        raise Unsupported(f"CRIU {have} at {path} cannot checkpoint VEs on this kernel (4.2 or newer is "
                          f"needed): {INSTALL_HINT}")
    return path


class UnsafeName(StateError):
    """A name that came from a VE cannot be written to CRIU's config (or command line) as one word."""


def _why(value: str) -> str:
    if "\n" in value or "\r" in value:
        return "it holds a line break"
    if any(c.isspace() for c in value):
        return "it holds white space"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "it holds control characters"
    bad = sorted({c for c in value if not WORD.fullmatch(c)})
    if bad:
        return f"it holds {''.join(bad)[:10]!r}, which CRIU's config reads as syntax"
    return "it is empty or too long"


def shown(value: str, width: int = 80) -> str:
    """``value`` quoted on one line (line breaks and control characters escaped), cut to ``width``."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def path_word(value: str, what: str) -> str:
    """Return ``value`` if it is an absolute path CRIU reads back as exactly itself, else raise UnsafeName."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise UnsafeName(f"{what} {shown(str(value))} is not an absolute path")
    if not WORD.fullmatch(value) or len(value) > MAX_WORD:
        raise UnsafeName(f"{what} {shown(value)} cannot be passed to CRIU safely: {_why(value)}")
    if any(part in (".", "..") for part in value.split("/")):
        raise UnsafeName(f"{what} {shown(value)} has '.' or '..' in it")
    return value


def write_config(path: Path, options: list[tuple[str, str]]) -> None:
    """Write a CRIU config file of known options, each value checked to be one safe word.

    The file is the only way extra options reach the criu that ``lxc-checkpoint`` runs, and
    CRIU takes any option from it (``action-script`` runs a program as root), so a line is
    written only when it cannot be read as more than the one option meant.
    """
    lines = []
    for option, value in options:
        shape = OPTIONS.get(option)
        if shape is None:
            raise UnsafeName(f"CRIU option {shown(option)} is not one the engine writes")
        if not shape.fullmatch(value) or len(value) > 2 * MAX_WORD:
            raise UnsafeName(f"CRIU option {option} {shown(value)} cannot be written safely: {_why(value)}")
        lines.append(f"{option} {value}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write("".join(lines))
