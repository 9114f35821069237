"""What makes an alert, as pure functions of what the panel knows (no Django): the tests' and the job's rules.

An alert is a condition about a VE or a node. It fires once when the condition becomes true and resolves
once when it becomes false again: a pass that finds it still true (or still false) sends nothing.
"""

from __future__ import annotations

KINDS = {
    "memory": "memory near its limit",
    "disk": "disk near its quota",
    "failcnt": "a resource limit was hit",
    "oom": "a process was killed for lack of memory",
    "stopped": "stopped on its own",
    "node_down": "node down",
}
DEFAULT_MEMORY_PERCENT = 90
DEFAULT_DISK_PERCENT = 90
NODE_DOWN_AFTER = 60  # seconds an agent must be silent before its node counts as down
FAILCNTS = ("memory_failcnt", "swap_failcnt", "nproc_failcnt")


def step(firing: bool, condition: bool) -> str | None:
    """"fire", "resolve" or None (nothing to say) for an alert that is (not) firing and its condition now."""
    if condition and not firing:
        return "fire"
    if firing and not condition:
        return "resolve"
    return None


def percent_of(used, limit) -> float | None:
    if not isinstance(used, (int, float)) or not isinstance(limit, (int, float)) or limit <= 0:
        return None
    return 100.0 * used / limit


def over(used, limit, threshold: int) -> tuple[bool, float | None]:
    """Whether used is at least threshold percent of limit (unknown or unlimited: not over)."""
    p = percent_of(used, limit)
    return (p is not None and p >= threshold), p


def grew(before, now) -> bool:
    """A counter that went up since the last pass (a counter that restarted at a VE's start did not grow)."""
    return isinstance(before, int) and isinstance(now, int) and now > before


def failcnt(usage: dict) -> int | None:
    values = [usage.get(k) for k in FAILCNTS if isinstance(usage.get(k), int)]
    return sum(values) if values else None


def conditions(usage: dict, last: dict, status: str, last_status: str | None, asked_to_stop: bool,
               memory_percent: int, disk_percent: int) -> dict[str, tuple[bool, str]]:
    """Each VE alert kind -> (condition, what it is, in words), from this pass's usage and the last pass's."""
    out = {}
    mem_over, mem_p = over(usage.get("memory_bytes"), usage.get("memory_limit_bytes"), memory_percent)
    out["memory"] = (mem_over, f"memory at {mem_p:.0f}% of its limit" if mem_p is not None else "")
    disk_over, disk_p = over(usage.get("disk_bytes"), usage.get("disk_limit_bytes"), disk_percent)
    out["disk"] = (disk_over, f"disk at {disk_p:.0f}% of its quota" if disk_p is not None else "")
    fc = failcnt(usage)
    out["failcnt"] = (grew(last.get("failcnt"), fc), f"limits hit {fc} times" if fc is not None else "")
    oom = usage.get("oom_kills")
    out["oom"] = (grew(last.get("oom"), oom), f"{oom} processes killed for lack of memory" if oom else "")
    stopped = status == "stopped" and (last_status == "running" or last.get("stopped_alone", False)) \
        and not asked_to_stop
    out["stopped"] = (stopped, "stopped without anyone asking (a crash, or a poweroff inside)" if stopped else "")
    return out
