"""Joining a node: its own Redis credentials and the one command that starts its agent.

Each node's agent authenticates to the panel's Redis as ACL user ``agent-<name>``. Its password lives in
root's ``<state>/secrets/redis-agent-<name>``; that file is the record of a joined node, so ``manage.py serve``
rebuilds every node's ACL user from the secrets directory on each start (no database needed by root).
"""

import re
from pathlib import Path

from vzpanel.agent.protocol import NODE_RE

SECRET_PREFIX = "redis-agent-"


class JoinError(Exception):
    """A node cannot be joined or removed as asked; the message says why."""


def check_name(name: str) -> str:
    """Return name if an agent could serve it (the agent's own rule), else raise JoinError."""
    if not re.fullmatch(NODE_RE, name) or name == "templates":
        raise JoinError(f"{name!r} is not a node name: lower-case letters, digits and hyphens")
    return name


def secret_path(secrets_dir: Path, name: str) -> Path:
    return Path(secrets_dir) / f"{SECRET_PREFIX}{check_name(name)}"


def joined_nodes(secrets_dir: Path) -> list[str]:
    """The nodes holding agent credentials in secrets_dir, sorted; files with names no agent uses are ignored."""
    found = []
    for path in sorted(Path(secrets_dir).glob(f"{SECRET_PREFIX}*")):
        name = path.name[len(SECRET_PREFIX):]
        if path.is_file() and not path.is_symlink() and re.fullmatch(NODE_RE, name):
            found.append(name)
    return found


def agent_acl_line(name: str, password_sha256: str) -> str:
    """The Redis ACL user of one node's agent: its own request and reply keys and the console channel layer.

    ``resetkeys``/``resetchannels`` first, so nothing granted elsewhere widens it. Commands that name no key
    are not held by the key patterns, so those reaching every key are taken away: @dangerous (FLUSHALL,
    FLUSHDB, KEYS, ...), SCAN and RANDOMKEY. No agent uses them.
    """
    check_name(name)
    return (f"user agent-{name} on #{password_sha256} resetkeys ~vz:agent:{name}:* ~asgi* "
            "resetchannels &* +@all -@admin -@dangerous -scan -randomkey")


def agent_command(name: str, redis_url: str, vz_root: str = "/var/lib/vz") -> str:
    """The one command to run as root on the new host: set it up as a node and start its agent."""
    check_name(name)
    return (f"scripts/setup && VZPANEL_NO_DATABASE=1 VZ_ROOT={vz_root} "
            f"VZPANEL_AGENT_REDIS_URL='{redis_url}' .venv/bin/python -m vzpanel.agent --node {name}")
