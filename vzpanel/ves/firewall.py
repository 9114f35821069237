"""A VE's firewall from the panel: what the engine last reported, presets, and changes queued as tasks.

The rules are the engine's (vzengine/vefirewall.py: ``ACTION PROTO [PORT] [from SOURCE]``); they are
checked here for a clear form error, and again by the node agent and the engine. What the page shows is
what the engine last reported for the VE (``firewall_policy`` and ``firewall_rules`` in a task's VE info).
"""

from __future__ import annotations

import ipaddress
import re

from django.db import transaction
from django.http import Http404

from vzpanel.tasks import queue
from vzpanel.tasks.models import Task

from .models import VE
from .services import ActionRefused, InvalidRequest, _new_task, busy_message

MAX_RULES = 64  # vzengine.vefirewall.MAX_RULES
ACTIONS = ("accept", "drop")
PROTOS = ("tcp", "udp", "icmp", "any")
PRESETS = {
    "web": ("Web server (22, 80, 443)", "drop", ["accept tcp 22", "accept tcp 80", "accept tcp 443"]),
    "ssh": ("SSH only", "drop", ["accept tcp 22"]),
    "open": ("Allow all", "accept", []),
}
FROM = {VE.Status.RUNNING, VE.Status.STOPPED}
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def check_access(user, ve: VE) -> None:
    """The firewall is its owner's (and their reseller's, who acts for them) and the admins' only: anyone else
    gets the same 404 as for any VE."""
    if user.is_panel_admin or ve.owner_id == user.pk:
        return
    if ve.owner is not None and ve.owner.reseller_id is not None and ve.owner.reseller_id == user.pk:
        return
    raise Http404("No such VE.")


def current(ve: VE) -> dict:
    """{"policy", "rules", "known"}: the firewall as the engine last reported it (open when never reported)."""
    for task in ve.tasks.filter(status=Task.Status.COMPLETED).order_by("-finished_at", "-id")[:50]:
        extra = (task.result or {}).get("extra") if isinstance(task.result, dict) else None
        if isinstance(extra, dict) and "firewall_policy" in extra:
            return {"policy": extra["firewall_policy"], "rules": list(extra.get("firewall_rules") or []), "known": True}
    return {"policy": "accept", "rules": [], "known": False}


def make_rule(action: str, proto: str, port: str = "", source: str = "") -> str:
    """One rule in the engine's syntax, or InvalidRequest saying what is wrong."""
    action, proto, port, source = (str(x or "").strip().lower() for x in (action, proto, port, source))
    if action not in ACTIONS:
        raise InvalidRequest("The action is accept or drop.")
    if proto not in PROTOS:
        raise InvalidRequest("The protocol is tcp, udp, icmp or any.")
    rule = f"{action} {proto}"
    if port:
        m = _PORTS.match(port)
        if proto not in ("tcp", "udp"):
            raise InvalidRequest("Only tcp and udp rules take a port.")
        if not m or not all(1 <= int(p) <= 65535 for p in m.groups() if p) or (
                m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise InvalidRequest(f"{port!r} is not a port (1-65535) or a range of ports such as 8000-8080.")
        rule += f" {port}"
    if source:
        try:
            net = ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise InvalidRequest(f"{source!r} is not an IPv4 or IPv6 address or network (e.g. 203.0.113.0/24).") from None
        if "/" in source and ipaddress.ip_interface(source).ip != net.network_address:
            raise InvalidRequest(f"{source} has host bits set: did you mean {net}?")
        rule += f" from {net}"
    return rule


def parse_rule(text: str) -> str:
    words = str(text).split()
    if len(words) < 2:
        raise InvalidRequest(f"{text!r} is not a rule: ACTION PROTO [PORT] [from SOURCE].")
    port, source = "", ""
    rest = words[2:]
    if rest and rest[0] != "from":
        port = rest.pop(0)
    if rest:
        if rest[0] != "from" or len(rest) != 2:
            raise InvalidRequest(f"{text!r} is not a rule: ACTION PROTO [PORT] [from SOURCE].")
        source = rest[1]
    return make_rule(words[0], words[1], port, source)


def clean(policy, rules) -> tuple[str, list[str]]:
    policy = str(policy or "").strip().lower()
    if policy not in ("accept", "drop"):
        raise InvalidRequest("The default policy is accept or drop.")
    if not isinstance(rules, list | tuple):
        raise InvalidRequest("The rules are a list.")
    if len(rules) > MAX_RULES:
        raise InvalidRequest(f"A VE can have {MAX_RULES} firewall rules at most.")
    out = []
    for r in rules:
        rule = parse_rule(r)
        if rule in out:
            raise InvalidRequest(f"The rule {rule!r} is given twice.")
        out.append(rule)
    return policy, out


def set_firewall(user, ve: VE, policy, rules, *, request=None, ip=None) -> Task:
    """Queue replacing ve's firewall (policy and the whole rule list); return the Task."""
    check_access(user, ve)
    policy, rules = clean(policy, rules)
    if ve.status not in FROM:
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; its firewall can be changed when it runs or is stopped.")
    if ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(busy_message(ve))
    with transaction.atomic():
        task = _new_task(user, ve, Task.Action.SET_FIREWALL, {"policy": policy, "rules": rules}, ip,
                         f"policy {policy}, {len(rules)} rule(s)", request)
        queue.enqueue_on_commit(task)
    return task
