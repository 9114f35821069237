"""Joining a node: its own Redis credentials and the one command that starts its agent.

Each node's agent authenticates to the panel's Redis as ACL user ``agent-<name>``. Its password lives in
root's ``<state>/secrets/redis-agent-<name>``; that file is the record of a joined node, so ``manage.py serve``
rebuilds every node's ACL user from the secrets directory on each start (no database needed by root).

The admins' "Add node" page runs as the web user, which cannot write root's secrets: it makes the password,
shows it once in the join command, and leaves only its SHA-256 in ``<state>/data/joins/<name>`` (a *join
request*), from which serve makes the node's ACL user on its next start (unless root holds a secret for that
name, or it is the panel's own node). That password reaches the node's own keys only, which the web user
reaches anyway, so a compromised web process gains nothing by making one.
"""

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from vzpanel.agent.protocol import NODE_RE

SECRET_PREFIX = "redis-agent-"
CA_ON_NODE = "/etc/vzpanel/panel-redis.pem"  # the panel Redis's certificate, copied to the node
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
RESERVED = ("templates", "add")  # the node pages' own paths under /nodes/


class JoinError(Exception):
    """A node cannot be joined or removed as asked; the message says why."""


def check_name(name: str) -> str:
    """Return name if an agent could serve it (the agent's own rule), else raise JoinError."""
    if not re.fullmatch(NODE_RE, name) or name in RESERVED:
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
    """The Redis ACL user of one node's agent: its own request and reply keys, its console daemon's channel
    (``console.<name>``, which web processes send to), and write-only the web processes' own channels
    (``specific.*``, where its console replies go: it may add to them, never read or pop them, so no node
    reads another node's console output or the keys typed into it). No other node's console channel: a node
    that could send there could open a console on another node's VEs.

    ``resetkeys``/``resetchannels`` first, so nothing granted elsewhere widens it; no Pub/Sub channel (RQ
    sends its workers commands that way). Commands that name no key are not held by the key patterns, so
    those reaching every key are taken away: @dangerous (FLUSHALL, FLUSHDB, KEYS, ...), SCAN and RANDOMKEY.
    No agent uses them.
    """
    check_name(name)
    return (f"user agent-{name} on #{password_sha256} resetkeys ~vz:agent:{name}:* ~asgiconsole.{name} "
            "%W~asgispecific.* resetchannels +@all -@admin -@dangerous -scan -randomkey")


def agent_command(name: str, redis_url: str, vz_root: str = "/var/lib/vz") -> str:
    """The one command to run as root on the new host: set it up as a node and start its agent."""
    check_name(name)
    return (f"scripts/setup && VZPANEL_NO_DATABASE=1 VZ_ROOT={vz_root} "
            f"VZPANEL_AGENT_REDIS_URL='{redis_url}' .venv/bin/python -m vzpanel.agent --node {name}")


def agent_url(name: str, password: str, redis_host: str, redis_port: int, tls: bool = True) -> str:
    """The Redis URL a node's agent uses: its own user, over TLS checked against the panel's certificate."""
    check_name(name)
    if tls:
        return f"rediss://agent-{name}:{password}@{redis_host}:{redis_port}/0?ssl_ca_certs={CA_ON_NODE}"
    return f"redis://agent-{name}:{password}@{redis_host}:{redis_port}/0"


def join_steps(name: str, url: str, *, tls: bool, cert_path: Path, vz_root: str = "/var/lib/vz") -> list[str]:
    """What the admin does after adding a node, ending with the one command to run on the new host."""
    steps = ["restart `manage.py serve` so its Redis knows the node's user, then run on the new host "
             "(as root, in a checkout of vzpanel):"]
    if tls:
        steps.append(f"copy {cert_path} from the panel to {CA_ON_NODE} on the new host, then")
    return [*steps, agent_command(name, url, vz_root)]


def joins_dir(state_dir: Path) -> Path:
    """Where the web user leaves join requests (its own data directory)."""
    return Path(state_dir) / "data" / "joins"


def request_join(requests_dir: Path, name: str) -> str:
    """Make node name's agent password, keep only its hash as a join request; return the password (shown once).

    Refused (JoinError) when a request for name is already waiting: its password was shown once and is not kept.
    """
    check_name(name)
    Path(requests_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
    password = secrets.token_hex(24)
    digest = hashlib.sha256(password.encode()).hexdigest()
    try:
        fd = os.open(Path(requests_dir) / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
    except FileExistsError:
        raise JoinError(f"node {name} is already waiting to join; remove it first to make new credentials") from None
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    return password


def withdraw_join(requests_dir: Path, name: str) -> bool:
    """Remove node name's join request, if there is one."""
    try:
        os.unlink(Path(requests_dir) / check_name(name))
    except FileNotFoundError:
        return False
    return True


def join_requests(requests_dir: Path) -> dict[str, str]:
    """Node name -> password SHA-256 of the waiting join requests, read as root from the web user's directory:
    no links followed, regular files only, 100 bytes at most, anything but a hex digest ignored."""
    try:
        top = os.open(requests_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return {}
    found = {}
    try:
        for name in sorted(os.listdir(top)):
            if not re.fullmatch(NODE_RE, name) or name in RESERVED:
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=top)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    digest = os.read(fd, 100).decode(errors="replace").strip()
                    if HASH_RE.match(digest):
                        found[name] = digest
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return found
