"""The iptables/ip6tables rules one engine root owns, named after its tag so it removes only its own.

Root chains (created once per host boot, removed by ``purge``), with T the root's tag:

    raw    VZ-T-AS    from PREROUTING for packets from the root's veths (-i vzT+): drop what a VE
                      sends from an address the host does not route back to that VE (rpfilter),
                      and anything it sends to 127/8
    filter VZ-T-IN    from INPUT (inserted first) for packets from the root's veths, and from its
                      bridged ports when br_netfilter passes bridged frames to iptables: the host
                      is not a service to its VEs. Accepted are replies to what the host opened
                      (conntrack ESTABLISHED,RELATED), pings, ICMPv6 neighbour discovery, and
                      the ports vz.conf's HOST_PORTS opens on purpose; the rest is rejected
                      (admin-prohibited), whichever host address it was sent to
    filter VZ-T-FWD   from FORWARD (inserted first): a VE's new connections go through VZ-T-LIM
                      first, then traffic to and from the VEs is accepted, even when the host's
                      FORWARD policy is DROP
    filter VZ-T-LIM   the per-VE jumps to each VE's conntrack cap (``set_conntrack_cap``)
    nat    VZ-T-PF    from PREROUTING and OUTPUT for local destinations but 127/8 and ::1: port
                      forwards (the host's own loopback services are never shadowed by a forward)
    nat    VZ-T-POST  from POSTROUTING: NAT for the private part of the pool, hairpin NAT for
                      port forwards used by VEs

Per VE: nat chain VZ-T-<ctid> with its DNAT rules, jumped to from VZ-T-PF (in iptables to the
VE's first IPv4 address, and in ip6tables to its first IPv6 address when it has one); filter
chain VZ-T-<ctid> with its conntrack cap (connlimit, mask 0: every new connection the VE opens
through the host counts in one bucket per rule), jumped to from VZ-T-LIM for ``-i`` its veth.

Changes go through ``iptables-restore --noflush``: declaring ``:CHAIN`` flushes and refills just
that chain in one transaction, so no rule of anyone else is touched. (With the nf_tables backend
a rule that is not rewritten keeps its state: a VE's connlimit count survives other changes.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import Unsupported
from .run import run, which

TABLES = ("raw", "filter", "nat")


@dataclass(frozen=True)
class PortForward:
    proto: str  # tcp | udp
    host_port: int
    ve_port: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_port}:{self.ve_port}"


def have_ipv6() -> bool:
    return Path("/proc/sys/net/ipv6").is_dir()


class Firewall:
    def __init__(self, tag: str, ifprefix: str):
        self.tag = tag
        self.ifprefix = ifprefix  # every host-side veth of the root starts with it
        self.prefix = f"VZ-{tag}-"

    # --- names ----------------------------------------------------------------------------
    def chain(self, what: str | int) -> str:
        return f"{self.prefix}{what}"

    # --- tools ----------------------------------------------------------------------------
    @staticmethod
    def _tool(family: int, save: bool = False) -> str:
        name = ("iptables" if family == 4 else "ip6tables") + ("-save" if save else "-restore")
        if which(name) is None:
            raise Unsupported(f"VE networking needs {name}: apt-get install iptables")
        return name

    def save(self, family: int, table: str | None = None) -> str:
        cmd = [self._tool(family, save=True)]
        if table:
            cmd += ["-t", table]
        return run(cmd, what=f"read the {'ip6' if family == 6 else 'ip'}tables rules").stdout

    def restore(self, family: int, script: str) -> None:
        run([self._tool(family), "-w", "--noflush"], input=script,
            what=f"change the {'ip6' if family == 6 else 'ip'}tables rules")

    @staticmethod
    def _tables(saved: str) -> dict[str, list[str]]:
        """iptables-save output → {table: its lines}."""
        out: dict[str, list[str]] = {}
        table = None
        for line in saved.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                out[table] = []
            elif table is not None and line and not line.startswith("#") and line != "COMMIT":
                out[table].append(line)
        return out

    def own_lines(self, family: int) -> list[str]:
        """Every rule and chain of this root (``table: line``), for checks and tests."""
        out = []
        for table, lines in self._tables(self.save(family)).items():
            for line in lines:
                if self.prefix in line or self.ifprefix in line:
                    out.append(f"{table}: {line}")
        return out

    # --- root chains ----------------------------------------------------------------------
    def _jumps(self, family: int, bridged: bool = False) -> dict[str, list[str]]:
        """The rules in built-in chains that lead into this root's chains (as iptables-save prints
        them, but ``-I CHAIN 1`` for those that go first)."""
        iface = f"{self.ifprefix}+"
        loopback = "127.0.0.0/8" if family == 4 else "::1/128"
        inputs = [f"-I INPUT 1 -i {iface} -j {self.chain('IN')}"]
        if bridged:
            inputs.append(f"-I INPUT 1 -m physdev --physdev-in {iface} -j {self.chain('IN')}")
        return {
            "raw": [f"-A PREROUTING -i {iface} -j {self.chain('AS')}"],
            "filter": [*inputs, f"-I FORWARD 1 -j {self.chain('FWD')}"],
            "nat": [f"-A PREROUTING -m addrtype --dst-type LOCAL -j {self.chain('PF')}",
                    f"-A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j {self.chain('PF')}",
                    f"-A POSTROUTING -j {self.chain('POST')}"],
        }

    def _input_rules(self, family: int, host_ports: Iterable[tuple[str, int]]) -> list[str]:
        """VZ-T-IN: what a VE may send to the host itself."""
        rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
        if family == 4:
            rules.append("-p icmp -m icmp --icmp-type 8 -j ACCEPT")  # ping the gateway
        else:
            # neighbour solicitation and advertisement (the VEs' gateway fe80::1 is found by
            # them), router solicitation (answered by nothing, but not worth an error), ping
            rules += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (135, 136, 133, 128)]
        for proto, port in host_ports:
            rules.append(f"-p {proto} -m {proto} --dport {port} -j ACCEPT")
        rules.append("-j REJECT --reject-with " + ("icmp-admin-prohibited" if family == 4 else "icmp6-adm-prohibited"))
        return rules

    def ensure_root(self, family: int, pools: Iterable, nat: bool, host_ports: Iterable[tuple[str, int]] = (),
                    bridged: bool = False) -> None:
        """Create or refresh this root's chains for one address family (idempotent).

        ``host_ports`` are (proto, port) the host serves its VEs on purpose (vz.conf HOST_PORTS);
        ``bridged`` filters bridged ports too (only when br_netfilter passes their frames to
        iptables: a physdev match would load it, and that changes every bridge of the host).
        """
        iface = f"{self.ifprefix}+"
        pools = list(pools)
        post: list[str] = []  # filled below
        chains: dict[str, dict[str, list[str] | None]] = {
            "raw": {self.chain("AS"): (["-d 127.0.0.0/8 -j DROP"] if family == 4 else [])
                    + ["-m rpfilter --invert -j DROP"]},
            "filter": {self.chain("IN"): self._input_rules(family, host_ports),
                       self.chain("LIM"): None,
                       self.chain("FWD"): [f"-i {iface} -m conntrack --ctstate NEW -j {self.chain('LIM')}",
                                           f"-i {iface} -j ACCEPT", f"-o {iface} -j ACCEPT"]},
            "nat": {self.chain("PF"): None, self.chain("POST"): post},
        }
        for net in pools:
            post.append(f"-s {net} -o {iface} -m conntrack --ctstate DNAT -j MASQUERADE")
        if nat:
            for net in pools:
                if net.is_private:
                    post.append(f"-s {net} ! -d {net} ! -o {iface} -j MASQUERADE")
        existing = self._tables(self.save(family))
        jumps = self._jumps(family, bridged)
        script = []
        for table in TABLES:
            lines = existing.get(table, [])
            have_chains = {ln.split()[0][1:] for ln in lines if ln.startswith(":")}
            wanted = {_as_append(j) for j in jumps[table]}
            script.append(f"*{table}")
            for name, rules in chains[table].items():
                if rules is None:  # holds the per-VE jumps: create it, never flush it
                    if name not in have_chains:
                        script.append(f":{name} - [0:0]")
                    continue
                script.append(f":{name} - [0:0]")
                script += [f"-A {name} {r}" for r in rules]
            # jumps of an older engine (the OUTPUT jump that took 127.0.0.1 into VEs, say)
            script += ["-D" + ln[2:] for ln in lines if ln.startswith("-A ") and ln not in wanted
                       and not ln.split()[1].startswith(self.prefix)
                       and re.search(rf"-j {re.escape(self.prefix)}\S+", ln)]
            for jump in jumps[table]:
                if _as_append(jump) not in lines:
                    script.append(jump)
            script.append("COMMIT")
        self.restore(family, "\n".join(script) + "\n")

    # --- per-VE conntrack cap -------------------------------------------------------------
    def set_conntrack_cap(self, ctid: int, dev: str, cap: int | None, family: int = 4, running: bool = True) -> bool:
        """Let VE ``ctid`` (host-side veth ``dev``) have at most ``cap`` connections through the
        host that it opened (None: no cap, and no chain). Its count is kept when nothing changes.

        False when the root's filter chains or their jumps are missing (flushed by someone, an
        admin's firewall reload say): make them, then retry. ``running`` says the VE runs, so
        this is checked even when nothing of the VE changes (every start does it: a VE never
        runs with the host open to it).
        """
        if family == 6 and (not have_ipv6() or which("ip6tables-save") is None):
            return True
        name, lim = self.chain(ctid), self.chain("LIM")
        lines = self._tables(self.save(family, "filter")).get("filter", [])
        if running:
            chains = {ln.split()[0][1:] for ln in lines if ln.startswith(":")}
            if not {lim, self.chain("IN"), self.chain("FWD")} <= chains or not all(
                    _as_append(j) in lines for j in self._jumps(family)["filter"]):
                return False
        has_chain = any(ln.startswith(f":{name} ") for ln in lines)
        jump = f"-A {lim} -i {dev} -j {name}"
        stale = [ln for ln in lines if ln.startswith(f"-A {lim} ") and ln.endswith(f"-j {name}") and ln != jump]
        if cap is None:
            if not has_chain:
                return True
            script = ["*filter", *("-D" + ln[2:] for ln in stale)]
            if jump in lines:
                script.append("-D" + jump[2:])
            script += [f"-F {name}", f"-X {name}", "COMMIT"]
        else:
            if not any(ln.startswith(f":{lim} ") for ln in lines):
                return False
            reject = "icmp-admin-prohibited" if family == 4 else "icmp6-adm-prohibited"
            rule = (f"-A {name} -m connlimit --connlimit-above {cap} --connlimit-mask 0 --connlimit-saddr "
                    f"-j REJECT --reject-with {reject}")
            mine = [ln for ln in lines if ln.startswith(f"-A {name} ")]
            if mine == [rule] and jump in lines and not stale:
                return True  # as it should be: rewriting it would reset the VE's count
            script = ["*filter", *("-D" + ln[2:] for ln in stale)]
            if mine != [rule]:
                script += [f":{name} - [0:0]", rule]
            elif not has_chain:
                script.append(f":{name} - [0:0]")
            if jump not in lines:
                script.append(jump)
            script.append("COMMIT")
        self.restore(family, "\n".join(script) + "\n")
        return True

    # --- port forwards --------------------------------------------------------------------
    def set_port_forwards(self, ctid: int, dest: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                          forwards: list[PortForward], family: int = 4) -> bool:
        """Make VE ``ctid``'s DNAT rules of one address family exactly ``forwards`` to ``dest``
        (none: remove them).

        False when the root's chains are missing (flushed by someone): make them, then retry.
        """
        if family == 6 and (not have_ipv6() or which("ip6tables-save") is None):
            return True  # no IPv6 on this host: no rules, nothing to remove
        name, pf = self.chain(ctid), self.chain("PF")
        nat = self._tables(self.save(family, "nat")).get("nat", [])
        has_chain = any(ln.startswith(f":{name} ") for ln in nat)
        jump = f"-A {pf} -j {name}"
        if forwards and dest is not None and not any(ln.startswith(f":{pf} ") for ln in nat):
            return False
        if not forwards or dest is None:
            if not has_chain:
                return True
            script = ["*nat"]
            if jump in nat:
                script.append(f"-D {pf} -j {name}")
            script += [f"-F {name}", f"-X {name}", "COMMIT"]
        else:
            script = ["*nat", f":{name} - [0:0]"]
            to = f"[{dest}]" if family == 6 else str(dest)
            for f in forwards:
                script.append(f"-A {name} -p {f.proto} -m {f.proto} --dport {f.host_port} "
                              f"-j DNAT --to-destination {to}:{f.ve_port}")
            if jump not in nat:
                script.append(jump)
            script.append("COMMIT")
        self.restore(family, "\n".join(script) + "\n")
        return True

    def foreign_forwards(self) -> set[tuple[str, int]]:
        """(proto, port) of DNAT rules on this host that are not this root's (other roots, Docker)."""
        out = set()
        lines = self._tables(self.save(4, "nat")).get("nat", [])
        if have_ipv6() and which("ip6tables-save") is not None:
            lines += self._tables(self.save(6, "nat")).get("nat", [])
        for line in lines:
            if "DNAT" not in line or not line.startswith("-A ") or line.split()[1].startswith(self.prefix):
                continue
            proto = re.search(r"-p (tcp|udp)\b", line)
            port = re.search(r"--dport (\d+)\b", line)
            if proto and port:
                out.add((proto.group(1), int(port.group(1))))
        return out

    # --- removal --------------------------------------------------------------------------
    def purge(self, families: Iterable[int]) -> None:
        """Remove every chain of this root and every rule that leads into one."""
        for family in families:
            if which("iptables-save" if family == 4 else "ip6tables-save") is None:
                continue
            existing = self._tables(self.save(family))
            script = []
            for table, lines in existing.items():
                ours = [ln.split()[0][1:] for ln in lines if ln.startswith(f":{self.prefix}")]
                into = [ln for ln in lines if ln.startswith("-A ") and not ln.split()[1].startswith(self.prefix)
                        and re.search(rf"-j {re.escape(self.prefix)}\S+", ln)]
                if not ours and not into:
                    continue
                script.append(f"*{table}")
                script += ["-D" + ln[2:] for ln in into]
                script += [f"-F {c}" for c in ours]
                script += [f"-X {c}" for c in ours]
                script.append("COMMIT")
            if script:
                self.restore(family, "\n".join(script) + "\n")


def _as_append(jump: str) -> str:
    """How iptables-save prints a rule given as ``-I CHAIN 1 ...`` or ``-A CHAIN ...``."""
    parts = jump.split()
    if parts[0] == "-I":
        parts = ["-A", parts[1], *parts[3:]]
    return " ".join(parts)
