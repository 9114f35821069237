"""Command line of VE networking: vzctl's network options and net-hook, vzlist's network columns.

The library (vzengine.network) knows nothing of argparse; vzctl and vzlist find these hooks by
the names their registries expect (see CLI_MODULES in vzctl.py and the loop in vzlist.py).
"""

from __future__ import annotations

import sys
import time

from .. import validate
from ..errors import VZError
from ..network import NetworkFeature, human_rate


def add_set_options(parser) -> None:
    """Add the network options of 'create' and 'set' (they become Engine keyword args)."""
    g = parser.add_argument_group("network")
    g.add_argument("--ipadd", action="append", default=None, metavar="ADDRESS",
                   help="add an IPv4 or IPv6 address (auto: the next free one of the pool; auto6 for IPv6)")
    g.add_argument("--ipdel", action="append", default=None, metavar="ADDRESS",
                   help="remove an address (all: every address)")
    g.add_argument("--portfwd", action="append", default=None, metavar="PROTO:HOSTPORT:VEPORT",
                   help="forward a host port to the VE's first IPv4 address, and to its first IPv6 "
                        "address when it has one (e.g. tcp:2201:22)")
    g.add_argument("--portfwd-del", action="append", default=None, metavar="PROTO:HOSTPORT",
                   help="remove a port forward (all: every one)")
    g.add_argument("--netif_add", "--netif-add", dest="netif_add", action="append", default=None,
                   metavar="NAME[,MAC,,HOST_MAC,BRIDGE]",
                   help="add a bridged interface (layer 2, no anti-spoofing), e.g. eth1,,,,br0; MACs are "
                        "generated when left empty")
    g.add_argument("--bridge", default=None, metavar="BRIDGE",
                   help="the host bridge of the --netif_add interfaces that name none")
    g.add_argument("--netif_del", "--netif-del", dest="netif_del", action="append", default=None,
                   metavar="NAME", help="remove a bridged interface (all: every one)")
    g.add_argument("--rate", default=None, metavar="RATE",
                   help="limit the VE's traffic each way: kbit/s, or 512K, 10M, 1G (bit/s); unlimited; "
                        "default (vz.conf RATE)")
    g.add_argument("--conntrack", default=None, metavar="N",
                   help="at most N connections the VE opens through the host at once (unlimited; default: "
                        "vz.conf CONNTRACK_MAX, 4096)")


def set_params(args) -> dict:
    """Return the network options' values (None where not given)."""
    return {"ipadd": getattr(args, "ipadd", None), "ipdel": getattr(args, "ipdel", None),
            "portfwd": getattr(args, "portfwd", None), "portfwd_del": getattr(args, "portfwd_del", None),
            "netif_add": getattr(args, "netif_add", None), "netif_del": getattr(args, "netif_del", None),
            "bridge": getattr(args, "bridge", None), "rate": getattr(args, "rate", None),
            "conntrack": getattr(args, "conntrack", None)}


def register_commands(subparsers) -> None:
    """Add net-hook: not for users, the LXC start-host hook calls it after a reboot inside a VE."""
    p = subparsers.add_parser("net-hook")
    p.add_argument("ctid")
    p.add_argument("pid", type=int)


def run_command(eng, args, progress) -> int | None:
    """Run net-hook; None for any other command."""
    if args.command != "net-hook":
        return None
    feature = next(f for f in eng.features if isinstance(f, NetworkFeature))
    try:
        feature.restore_after_reboot(validate.ctid(args.ctid), args.pid)
    except VZError as e:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} VE {args.ctid}: network not restored: {e.message}",
              file=sys.stderr)
        return 1
    return 0


def _count(key: str):
    return lambda i: i.extra.get(key, "-") if i.running else "-"


def _total(key: str):
    return lambda i: i.extra.get(key, "-")


VZLIST_FIELDS = {
    "traffic_in": ("IN_BYTES", 12, _count("traffic_in_bytes")),
    "traffic_out": ("OUT_BYTES", 12, _count("traffic_out_bytes")),
    "packets_in": ("IN_PKTS", 10, _count("traffic_in_packets")),
    "packets_out": ("OUT_PKTS", 10, _count("traffic_out_packets")),
    # since the VE was created (every run, stopped VEs too): NetworkFeature.totals
    "traffic_in_total": ("IN_TOTAL", 12, _total("net_in_bytes")),
    "traffic_out_total": ("OUT_TOTAL", 12, _total("net_out_bytes")),
    "packets_in_total": ("IN_PKTS_TOTAL", 13, _total("net_in_packets")),
    "packets_out_total": ("OUT_PKTS_TOTAL", 14, _total("net_out_packets")),
    "netif": ("NETIF", 20, lambda i: " ".join(f"{n['ifname']}@{n['bridge']}" for n in i.extra.get("netifs", []))
              or "-"),
    "portfwd": ("PORTFWD", 20, lambda i: " ".join(i.extra.get("portfwd", [])) or "-"),
    "rate": ("RATE", 6, lambda i: human_rate(i.extra.get("rate_kbit"))),
    "conntrack": ("CT_MAX", 8, lambda i: str(i.extra.get("conntrack_max") or "-")),
}
