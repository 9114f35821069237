"""A per-VE firewall for what comes IN to a VE, enforced on the host (issue 15).

Like Proxmox's, it lives in the host's tables, so a VE's root who flushes its own rules
(``iptables -F; iptables -P INPUT ACCEPT`` inside) changes nothing: the packets are dropped before
they reach the VE's veth.

Per VE (its conf): FIREWALL_POLICY (accept, the default, or drop) and FIREWALL_RULES, rules
separated by ';', each ``ACTION PROTO [PORT] [from SOURCE]``:

    ACTION   accept | drop
    PROTO    tcp | udp | icmp | any      (icmp is ICMPv6 for IPv6 traffic)
    PORT     a port or a range (8000-8080), tcp and udp only; none: every port
    SOURCE   an IPv4 or IPv6 address or network (10.0.0.0/8, 2001:db8::/32); none: anyone

e.g. ``vzctl set 101 --firewall-policy drop --firewall-rule-add 'accept tcp 22' --firewall-rule-add
'accept tcp 5432 from 10.0.0.0/8' --save``. The first rule that matches decides; a packet no rule
matches gets the policy. Replies to what the VE opened (conntrack ESTABLISHED,RELATED) always pass,
and what the VE sends is never filtered. A rule with an IPv4 source applies to IPv4 only, one with
an IPv6 source to IPv6 only, one without to both. Up to MAX_RULES rules. ``--firewall-rule-del N``
removes the Nth rule (as ``vzctl firewall CTID`` numbers them; ``all``: every one).

Where: the mangle table's FORWARD chain, in iptables and ip6tables. It jumps (first, ``-o`` any of
the root's veths) to VZ-<tag>-VEFW, which holds one jump per VE with a firewall (``-o`` its routed
veth) to VZ-<tag>-FW<ctid>, the VE's rules: accept is RETURN (the packet goes on to the filter
table, where the root's VZ-<tag>-FWD accepts it), drop is DROP. Mangle FORWARD runs before any
filter FORWARD rule, so nothing that (re)inserts rules there (this root's own chains after a
flush, an admin's firewall) can put an ACCEPT ahead of a VE's rules. Port forwards are DNAT'd
before FORWARD, so they pass the same rules, at the VE's port. Traffic the host itself sends to a
VE (OUTPUT, not FORWARD) and bridged interfaces (--netif_add: layer 2, not routed) are not
filtered. A VE without a policy or rules has no chain at all.

The rules match the veth by name, which stays the same when LXC restarts the VE after a reboot
inside it, so they hold across that reboot without a hook. They are made just before the VE
starts (no moment where it runs open), refreshed after start and resume, changed live by ``vzctl
set`` (undone if a later step fails), and removed on stop, destroy and purge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Busy, InvalidInput
from .features import Feature
from .firewall import Firewall, have_ipv6
from .lock import flock_within
from .network import ifname
from .run import which

if TYPE_CHECKING:
    from .rollback import Rollback
    from .veconf import VEConfig

MAX_RULES = 64
ACTIONS = ("accept", "drop")
PROTOS = ("tcp", "udp", "icmp", "any")
POLICIES = ("accept", "drop")
LOCK_WAIT = 60.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Rule:
    """One firewall rule: ``accept tcp 22 from 10.0.0.0/8``."""

    action: str
    proto: str
    ports: tuple[int, int] | None = None  # (first, last)
    source: Network | None = None

    def __str__(self) -> str:
        out = f"{self.action} {self.proto}"
        if self.ports:
            first, last = self.ports
            out += f" {first}" if first == last else f" {first}-{last}"
        if self.source is not None:
            out += f" from {self.source}"
        return out

    def applies_to(self, family: int) -> bool:
        return self.source is None or self.source.version == family

    def iptables(self, family: int) -> str:
        """The rule as iptables-save prints it (without ``-A CHAIN``)."""
        parts = []
        if self.source is not None and self.source.prefixlen:  # iptables-save omits -s 0.0.0.0/0
            parts.append(f"-s {self.source}")
        if self.proto == "icmp":
            parts.append("-p icmp" if family == 4 else "-p ipv6-icmp")
        elif self.proto in ("tcp", "udp"):
            parts.append(f"-p {self.proto}")
            if self.ports:
                first, last = self.ports
                port = str(first) if first == last else f"{first}:{last}"
                parts.append(f"-m {self.proto} --dport {port}")
        parts.append("-j RETURN" if self.action == "accept" else "-j DROP")
        return " ".join(parts)


def _port(text: str, rule: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"invalid firewall rule {rule!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_rule(value: str) -> Rule:
    """ACTION PROTO [PORT|FIRST-LAST] [from ADDRESS[/PREFIX]] (see the module's docstring)."""
    rule = " ".join(str(value).split())
    words = rule.lower().split(" ")
    usage = "use ACTION PROTO [PORT] [from SOURCE], e.g. 'accept tcp 22 from 10.0.0.0/8'"
    if len(words) < 2 or len(rule) > 120:
        raise InvalidInput(f"invalid firewall rule {rule!r}: {usage}")
    action, proto, rest = words[0], words[1], words[2:]
    if action not in ACTIONS:
        raise InvalidInput(f"invalid firewall rule {rule!r}: action {action!r} is not accept or drop")
    if proto not in PROTOS:
        raise InvalidInput(f"invalid firewall rule {rule!r}: protocol {proto!r} is not tcp, udp, icmp or any")
    ports = None
    if rest and rest[0] != "from":
        text = rest.pop(0)
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"invalid firewall rule {rule!r}: only tcp and udp rules take a port")
        first, sep, last = text.partition("-")
        ports = (_port(first, rule), _port(last, rule) if sep else _port(first, rule))
        if ports[0] > ports[1]:
            raise InvalidInput(f"invalid firewall rule {rule!r}: port range {text} runs backwards")
    source = None
    if rest:
        if rest[0] != "from" or len(rest) != 2:
            raise InvalidInput(f"invalid firewall rule {rule!r}: {usage}")
        source = parse_source(rest[1], rule)
    return Rule(action, proto, ports, source)


def parse_source(text: str, rule: str = "") -> Network | None:
    """An IPv4 or IPv6 address or network; ``any`` (None): every source."""
    if text in ("any", "all"):
        return None
    where = f"invalid firewall rule {rule!r}: " if rule else ""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidInput(f"{where}{text!r} is not an IPv4 or IPv6 address or network") from None
    if "/" in text and ipaddress.ip_interface(text).ip != net.network_address:
        raise InvalidInput(f"{where}{text} has host bits set: did you mean {net}?")
    return net  # 0.0.0.0/0 stays: anyone, over IPv4 only


def parse_policy(value: str) -> str:
    s = str(value).strip().lower()
    if s not in POLICIES:
        raise InvalidInput(f"invalid firewall policy {value!r}: use accept or drop")
    return s


def stored_rules(conf: VEConfig) -> list[str]:
    """The VE's rules as its conf has them (not parsed)."""
    return [r.strip() for r in conf.get("FIREWALL_RULES").split(";") if r.strip()]


def rules_of(conf: VEConfig) -> tuple[str, list[Rule]]:
    """(policy, rules) of a VE; a conf edited into nonsense refuses (the VE never runs open by mistake)."""
    try:
        policy = parse_policy(conf.get("FIREWALL_POLICY") or "accept")
        rules = [parse_rule(r) for r in stored_rules(conf)]
    except InvalidInput as e:
        raise InvalidInput(f"VE {conf.ctid}'s firewall in its config: {e.message}") from None
    return policy, rules


class VEFirewallFeature(Feature):
    name = "vefirewall"
    params = ("firewall_policy", "firewall_rules", "firewall_rule_add", "firewall_rule_del")

    # --- names ----------------------------------------------------------------------------
    @property
    def tables(self) -> Firewall:
        return Firewall(self.engine.layout.tag, f"vz{self.engine.layout.tag}")

    def chain(self, ctid: int) -> str:
        return self.tables.chain(f"FW{ctid}")

    @property
    def dispatch(self) -> str:
        return self.tables.chain("VEFW")

    def _marker(self, ctid: int) -> Path:
        """Present while the VE may have a chain (saves reading the tables for VEs without one)."""
        return self.engine.layout.rundir / "vefirewall" / str(ctid)

    @staticmethod
    def families() -> list[int]:
        return [4, 6] if have_ipv6() and which("ip6tables-restore") is not None else [4]

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        lockdir = self.engine.layout.lockdir
        lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lockdir / "vefirewall.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not flock_within(fd, LOCK_WAIT, interval=0.02):
                raise Busy("the VE firewalls of this engine root are busy; try again")
            yield
        finally:
            os.close(fd)

    # --- Feature: check and apply ---------------------------------------------------------
    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        given = {k: v for k, v in params.items() if v is not None}
        if not given:
            return {}
        replace, add, delete = given.get("firewall_rules"), given.get("firewall_rule_add"), given.get("firewall_rule_del")
        if replace is not None and (add or delete):
            raise InvalidInput("give either the whole rule list or rules to add and delete, not both")
        if creating and delete:
            raise InvalidInput("--firewall-rule-del changes an existing VE; a new one has no rules to remove")
        current = stored_rules(conf)
        if replace is not None:
            kept = []
            new = [str(r) for r in replace]
        else:
            drop: set[int] = set()
            for x in delete or []:
                s = str(x).strip().lower()
                if s == "all":
                    drop = set(range(len(current)))
                    continue
                if not s.isdigit() or not 1 <= int(s) <= len(current):
                    raise InvalidInput(f"VE {conf.ctid} has no firewall rule {x!r} (it has {len(current)}; "
                                       "number them with vzctl firewall CTID)")
                drop.add(int(s) - 1)
            kept = [r for i, r in enumerate(current) if i not in drop]
            new = [str(r) for r in add or []]
        if len(kept) + len(new) > MAX_RULES:
            raise InvalidInput(f"a VE can have {MAX_RULES} firewall rules at most ({len(kept) + len(new)} given)")
        rules: list[Rule] = []
        for text in kept + new:
            rule = parse_rule(text)
            if rule in rules:
                raise InvalidInput(f"firewall rule {str(rule)!r} is given twice")
            rules.append(rule)
        if "firewall_policy" in given:
            policy = parse_policy(given["firewall_policy"])
        else:
            try:
                policy = parse_policy(conf.get("FIREWALL_POLICY") or "accept")
            except InvalidInput:
                raise InvalidInput(f"VE {conf.ctid}'s FIREWALL_POLICY in its config is not accept or drop: "
                                   "give --firewall-policy") from None
        return {"policy": policy, "rules": rules}

    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        if not params:
            return
        old = (conf.get("FIREWALL_POLICY"), conf.get("FIREWALL_RULES"))
        conf.set("FIREWALL_POLICY", "" if params["policy"] == "accept" else params["policy"])
        conf.set("FIREWALL_RULES", ";".join(str(r) for r in params["rules"]))
        if not running:
            return
        ctid = conf.ctid

        def undo() -> None:
            conf.set("FIREWALL_POLICY", old[0])
            conf.set("FIREWALL_RULES", old[1])
            self.sync(ctid, *rules_of(conf))

        rb.add(f"restore the firewall of VE {ctid}", undo)
        self.sync(ctid, params["policy"], params["rules"])

    # --- Feature: life cycle --------------------------------------------------------------
    def _configured(self, conf: VEConfig) -> bool:
        return bool(conf.get("FIREWALL_POLICY") or conf.get("FIREWALL_RULES"))

    def before_start(self, conf: VEConfig) -> None:
        # Before the VE's veth exists: the rules match it by name, so it never runs unfiltered.
        if self._configured(conf) or self._marker(conf.ctid).exists():
            self.sync(conf.ctid, *rules_of(conf))

    def after_start(self, conf: VEConfig) -> None:
        # Again (a resume skips before_start; someone may have flushed the mangle table).
        if self._configured(conf) or self._marker(conf.ctid).exists():
            self.sync(conf.ctid, *rules_of(conf))

    def after_stop(self, conf: VEConfig) -> None:
        if self._configured(conf) or self._marker(conf.ctid).exists():
            self.remove(conf.ctid)

    def destroy(self, conf: VEConfig) -> None:
        if self._configured(conf) or self._marker(conf.ctid).exists():
            self.remove(conf.ctid)

    def purge(self) -> None:
        """Remove every chain of this feature and the jumps into them (the network's purge may have)."""
        for family in self.families():
            lines = self.tables._tables(self.tables.save(family, "mangle")).get("mangle", [])
            mine = self.tables.chain("")
            ours = [ln.split()[0][1:] for ln in lines if ln.startswith(":") and ln[1:].startswith(mine)
                    and (ln.split()[0][1:] == self.dispatch or ln.split()[0][1:].startswith(mine + "FW"))]
            jumps = [ln for ln in lines if ln.startswith("-A FORWARD ") and ln.endswith(f"-j {self.dispatch}")]
            if not ours and not jumps:
                continue
            script = ["*mangle", *("-D" + ln[2:] for ln in jumps), *(f"-F {c}" for c in ours),
                      *(f"-X {c}" for c in ours), "COMMIT"]
            self.tables.restore(family, "\n".join(script) + "\n")
        d = self.engine.layout.rundir / "vefirewall"
        if d.is_dir():
            for p in d.iterdir():
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                d.rmdir()

    def info(self, conf: VEConfig, running: bool) -> dict:
        policy = (conf.get("FIREWALL_POLICY") or "accept").lower()
        return {"firewall_policy": policy, "firewall_rules": stored_rules(conf)}

    # --- the host's tables ----------------------------------------------------------------
    def sync(self, ctid: int, policy: str, rules: list[Rule]) -> None:
        """Make VE ``ctid``'s chains say ``policy`` and ``rules`` (none when it is open), in every family."""
        with self._lock():
            open_ = policy == "accept" and not rules
            if not open_:
                self._marker(ctid).parent.mkdir(parents=True, exist_ok=True)
                self._marker(ctid).touch()
            for i, family in enumerate(self.families()):
                if i:
                    self.engine._fail_point("firewall:after-ipv4")
                self._sync_family(ctid, family, policy, [r for r in rules if r.applies_to(family)])
            if open_:
                self._marker(ctid).unlink(missing_ok=True)

    def remove(self, ctid: int) -> None:
        """Remove VE ``ctid``'s chains and the jumps to them."""
        self.sync(ctid, "accept", [])

    def wanted(self, ctid: int, family: int, policy: str, rules: list[Rule]) -> list[str]:
        """The VE's chain as iptables-save prints it (its ``-A`` lines)."""
        name = self.chain(ctid)
        out = [f"-A {name} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
        out += [f"-A {name} {r.iptables(family)}" for r in rules]
        if policy == "drop":
            out.append(f"-A {name} -j DROP")
        return out

    def _sync_family(self, ctid: int, family: int, policy: str, rules: list[Rule]) -> None:
        tables = self.tables
        name, dispatch, dev = self.chain(ctid), self.dispatch, ifname(self.engine.layout.tag, ctid)
        lines = tables._tables(tables.save(family, "mangle")).get("mangle", [])
        has_chain = any(ln.startswith(f":{name} ") for ln in lines)
        jump = f"-A {dispatch} -o {dev} -j {name}"
        stale = [ln for ln in lines if ln.startswith(f"-A {dispatch} ") and ln.endswith(f"-j {name}") and ln != jump]
        if policy == "accept" and not rules:  # open: no chain at all
            if not has_chain and not stale:
                return
            script = ["*mangle", *("-D" + ln[2:] for ln in stale)]
            if jump in lines:
                script.append("-D" + jump[2:])
            if has_chain:
                script += [f"-F {name}", f"-X {name}"]
        else:
            want = self.wanted(ctid, family, policy, rules)
            mine = [ln for ln in lines if ln.startswith(f"-A {name} ")]
            entry = f"-A FORWARD -o vz{self.engine.layout.tag}+ -j {dispatch}"
            script = ["*mangle"]
            if not any(ln.startswith(f":{dispatch} ") for ln in lines):
                script.append(f":{dispatch} - [0:0]")
            if entry not in lines:
                script.append(f"-I FORWARD 1 -o vz{self.engine.layout.tag}+ -j {dispatch}")
            script += ["-D" + ln[2:] for ln in stale]
            if mine != want or not has_chain:
                script += [f":{name} - [0:0]", *want]
            if jump not in lines:
                script.append(jump)
            if len(script) == 1:
                return  # as it should be
        script.append("COMMIT")
        tables.restore(family, "\n".join(script) + "\n")
