"""Command line of the VE firewall: vzctl's --firewall-* options and 'firewall', vzlist's column."""

from __future__ import annotations

from ..vefirewall import POLICIES, VEFirewallFeature


def add_set_options(parser) -> None:
    g = parser.add_argument_group("firewall (what comes in to the VE; enforced on the host)")
    g.add_argument("--firewall-policy", dest="firewall_policy", default=None, choices=POLICIES,
                   help="what happens to traffic no rule matches (default accept)")
    g.add_argument("--firewall-rule-add", dest="firewall_rule_add", action="append", default=None, metavar="RULE",
                   help="append a rule: ACTION PROTO [PORT[-PORT]] [from SOURCE], e.g. 'accept tcp 22 from "
                        "10.0.0.0/8'; ACTION accept|drop, PROTO tcp|udp|icmp|any")
    g.add_argument("--firewall-rule-del", dest="firewall_rule_del", action="append", default=None, metavar="N",
                   help="remove rule number N (vzctl firewall CTID lists them; all: every rule)")


def set_params(args) -> dict:
    return {"firewall_policy": getattr(args, "firewall_policy", None),
            "firewall_rule_add": getattr(args, "firewall_rule_add", None),
            "firewall_rule_del": getattr(args, "firewall_rule_del", None)}


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("firewall", help="show a VE's firewall policy and numbered rules")
    p.add_argument("ctid")


def run_command(eng, args, progress) -> int | None:
    if args.command != "firewall":
        return None
    conf = eng.config(args.ctid)
    info = VEFirewallFeature(eng).info(conf, False)
    print(f"VE {conf.ctid} firewall: policy {info['firewall_policy']}, "
          f"{len(info['firewall_rules'])} rule(s)")
    for i, rule in enumerate(info["firewall_rules"], 1):
        print(f"{i:3}  {rule}")
    return 0


def _column(info) -> str:
    policy, rules = info.extra.get("firewall_policy", "accept"), info.extra.get("firewall_rules", [])
    return "-" if policy == "accept" and not rules else f"{policy}/{len(rules)}"


VZLIST_FIELDS = {"firewall": ("FIREWALL", 8, _column)}
