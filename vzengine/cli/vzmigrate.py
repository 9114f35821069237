"""vzmigrate: move a VE to another node, as OpenVZ's ``vzmigrate [--online] [--keep-dst] DESTINATION CTID``.

Run on the source node as root. DESTINATION is a host this node's root reaches over SSH with a key,
optionally ``host:ROOT`` (the destination's engine root, default /var/lib/vz). ``--agent OP`` is the
destination's side, run there over SSH by the source's vzmigrate; it is not meant for people.
"""

from __future__ import annotations

import json
import shlex
import sys

from ..migrate import migrate
from .common import Parser, add_global_options, main_wrapper, make_engine, progress_printer

PROG = "vzmigrate"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Migrate a Virtual Environment to another node (offline, by restart "
                                      "for a running one, or live with --online).")
    add_global_options(p)
    p.add_argument("--online", action="store_true",
                   help="live migration with CRIU: a running VE's processes move with their memory and TCP "
                        "connections (sysvinit and BusyBox VEs; without it, a running VE migrates by restart)")
    p.add_argument("--keep-dst", action="store_true",
                   help="if the migration fails at its end, keep the destination's copy (stopped)")
    p.add_argument("--with-snapshots", action="store_true", help="move the VE's snapshots too")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh client configuration to use (ssh -F)")
    p.add_argument("--remote-command", metavar="CMD", default="vzmigrate",
                   help="how to run vzmigrate on the destination (default: vzmigrate)")
    p.add_argument("-j", "--json", action="store_true", help="print the result as JSON")
    p.add_argument("destination", metavar="DESTINATION", help="host or host:ROOT")
    p.add_argument("ctid", metavar="CTID")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--agent" in argv:
        return _agent(argv)
    args = build_parser().parse_args(argv)

    def go() -> int:
        eng = make_engine(args)
        res = migrate(eng, args.destination, args.ctid, online=args.online, keep_dst=args.keep_dst,
                      with_snapshots=args.with_snapshots, ssh_config=args.ssh_config,
                      remote_command=shlex.split(args.remote_command), progress=progress_printer(args.quiet))
        if args.json:
            print(json.dumps(res.to_dict()))
        else:
            word = "frozen" if res.mode == "live" else "downtime"
            down = f", {word} {res.downtime_seconds:.2f} s" if res.downtime_seconds is not None else ""
            base = f" (+{res.base_bytes} bytes of template, once)" if res.base_bytes else ""
            print(f"VE {res.ctid} migrated to {res.destination} ({res.mode}): {res.bytes_sent} bytes sent{base}, "
                  f"{res.total_seconds:.2f} s{down}")
        return 0

    return main_wrapper(PROG, go)


def _agent(argv: list[str]) -> int:
    """``vzmigrate --root ROOT --agent OP ARG...``: one operation of the destination's side."""
    from ..migrate_dst import agent_main

    i = argv.index("--agent")
    head, op, rest = argv[:i], argv[i + 1] if i + 1 < len(argv) else "", argv[i + 2:]
    root = head[head.index("--root") + 1] if "--root" in head and head.index("--root") + 1 < len(head) else None
    if not root or not op:
        print(json.dumps({"ok": False, "error": "usage: vzmigrate --root ROOT --agent OP ARG...",
                          "kind": "InvalidInput"}))
        return 2
    return agent_main(root, op, rest)


if __name__ == "__main__":
    sys.exit(main())
