"""A task's result (a JSON dict the job returned) in words, for people rather than programs.

Pure: no Django. The task page shows what ``describe`` returns as a definition list; the API keeps the raw dict.
"""

from __future__ import annotations

LABELS = {
    "ctid": "VE",
    "status": "State",
    "hostname": "Host name",
    "ostemplate": "OS template",
    "ip_addresses": "Addresses",
    "nproc": "Processes",
    "onboot": "Starts with the node",
    "nameservers": "Name servers",
    "extra": "Details",
    "snapshot": "Snapshot",
    "deleted": "Deleted",
    "destroyed": "Destroyed",
    "backups_deleted": "Backups deleted",
    "backup": "Backup",
    "size": "Size",
    "verified": "Verified",
    "rotated": "Older backups removed",
    "source": "From VE",
    "kept_as_snapshot": "Previous files kept as snapshot",
    "ssh_port": "SSH port",
    "snapshots_synced": "Snapshots re-read",
    "daily_backups": "Daily backups queued",
}
WORDS = {"ip": "IP", "ssh": "SSH", "cpu": "CPU", "ram": "RAM", "mb": "MB", "gb": "GB", "id": "ID", "os": "OS",
         "ve": "VE", "ves": "VEs", "dns": "DNS", "ipv4": "IPv4", "ipv6": "IPv6", "tcp": "TCP", "udp": "UDP"}
UNITS = ("B", "KB", "MB", "GB", "TB")
MAX_DEPTH = 3
NOTHING = "\N{EN DASH}"


class Pairs(list):
    """(label, words) pairs; ``nested`` lets a template tell them from a plain string."""

    nested = True


def label(key: str) -> str:
    """Return the words for a result key: a known label, else its parts with acronyms kept upper case."""
    if key in LABELS:
        return LABELS[key]
    raw = [p for p in str(key).replace("-", "_").split("_") if p]
    if not raw:
        return str(key)
    first = WORDS.get(raw[0].lower(), raw[0].capitalize())
    return " ".join([first, *(WORDS.get(p.lower(), p) for p in raw[1:])])


def size(n: int | float) -> str:
    """Return a byte count as people read it (1.5 GB), 1024-based like the rest of the panel."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(value)} {UNITS[unit]}" if unit == 0 else f"{value:.1f} {UNITS[unit]}"


def value_words(key: str, value, depth: int = 0):
    """Return a value as words, or as nested (label, words) pairs for a dict."""
    if isinstance(value, dict):
        return describe(value, depth + 1) if depth < MAX_DEPTH else f"{len(value)} item(s)"
    if value is None or value == "" or value == [] or value == {}:
        return NOTHING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(value_words(key, v, MAX_DEPTH)) for v in value)
    if isinstance(value, (int, float)):
        if key.endswith("_bytes") or key in ("size", "size_bytes"):
            return size(value)
        if key.endswith("_seconds"):
            return f"{value:.1f} s" if isinstance(value, float) else f"{value} s"
        if key.endswith("_mb"):
            return f"{value} MB"
        if key.endswith("_gb"):
            return f"{value} GB"
    return str(value)


def describe(result, depth: int = 0) -> Pairs:
    """Return result as (label, words) pairs in its own order; a non-dict result is one "Result" pair.

    A value is a string, or for a nested dict a list of pairs of its own (shown as a nested list).
    """
    if result is None or result == {}:
        return Pairs()
    if not isinstance(result, dict):
        return Pairs([("Result", value_words("result", result, depth))])
    return Pairs((label(str(k)), value_words(str(k), v, depth)) for k, v in result.items())
