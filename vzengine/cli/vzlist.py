"""vzlist: list VEs with OpenVZ's columns (CTID, NPROC, STATUS, IP_ADDR, HOSTNAME)."""

from __future__ import annotations

import json
import sys

from ..errors import InvalidInput
from .common import Parser, add_global_options, cli_modules, main_wrapper, make_engine

PROG = "vzlist"

# field name -> (header, width, getter); other modules add fields (resources, traffic).
FIELDS = {
    "ctid": ("CTID", 10, lambda i: i.ctid),
    "nproc": ("NPROC", 5, lambda i: i.nproc if i.nproc is not None else "-"),
    "numproc": ("NPROC", 5, lambda i: i.nproc if i.nproc is not None else "-"),
    "status": ("STATUS", 7, lambda i: i.status),
    "ip": ("IP_ADDR", 15, lambda i: " ".join(i.ip_addresses) or "-"),
    "hostname": ("HOSTNAME", 0, lambda i: i.hostname or "-"),
    "ostemplate": ("OSTEMPLATE", 16, lambda i: i.ostemplate),
    "onboot": ("ONBOOT", 6, lambda i: "yes" if i.onboot else "no"),
}
DEFAULT_FIELDS = "ctid,nproc,status,ip,hostname"
# Feature modules may add columns: a dict VZLIST_FIELDS of the same shape (getters see VEInfo.extra).
for _module in cli_modules():
    FIELDS.update(getattr(_module, "VZLIST_FIELDS", {}))


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="List Virtual Environments (running ones by default).")
    add_global_options(p)
    p.add_argument("-a", "--all", action="store_true", help="list stopped VEs too")
    p.add_argument("-S", "--stopped", action="store_true", help="list only stopped VEs")
    p.add_argument("-o", "--output", default=DEFAULT_FIELDS, help=f"fields ({', '.join(FIELDS)})")
    p.add_argument("-H", "--no-header", action="store_true")
    p.add_argument("-j", "--json", action="store_true")
    p.add_argument("ctids", nargs="*")
    return p


def _up(info) -> bool:
    """Whether the VE runs: its own system, or its rescue system (STATUS rescue, with processes)."""
    return info.running or (info.status == "rescue" and bool(info.nproc))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_wrapper(PROG, lambda: run(args))


def run(args) -> int:
    fields = [f.strip().lower() for f in args.output.split(",") if f.strip()]
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}")
    eng = make_engine(args)
    infos = [eng.status(c) for c in args.ctids] if args.ctids else eng.list()
    if args.stopped:
        infos = [i for i in infos if not _up(i)]
    elif not args.all and not args.ctids:
        infos = [i for i in infos if _up(i)]
    if args.json:
        json.dump([i.to_dict() for i in infos], sys.stdout, indent=1)
        print()
        return 0
    rows = [[str(FIELDS[f][2](i)) for f in fields] for i in infos]
    if not args.no_header:
        rows.insert(0, [FIELDS[f][0] for f in fields])
    for row in rows:
        cells = []
        for f, cell in zip(fields, row, strict=True):
            width = FIELDS[f][1]
            cells.append(cell.rjust(width) if f in ("ctid", "nproc", "numproc") else cell.ljust(width))
        print(" ".join(cells).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
