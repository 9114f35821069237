"""Command line of rescue mode: vzctl rescue (enter, --leave)."""

from __future__ import annotations

from .. import validate
from ..errors import InvalidInput
from ..rescue import enter, leave


def register_commands(sub) -> None:
    s = sub.add_parser("rescue", help="boot a VE into a rescue system with its own root at /mnt (or --leave it)")
    s.add_argument("ctid")
    s.add_argument("--template", help="rescue template (default: RESCUE_TEMPLATE in vz.conf, or debian-12-sysv)")
    s.add_argument("--leave", action="store_true", help="stop the rescue system and remove its temporary root")
    s.add_argument("--start", action="store_true", help="with --leave: boot the VE's own system")
    s.add_argument("--wait", action="store_true", help="return once the system has finished booting")


def run_command(eng, args, progress) -> int | None:
    if args.command != "rescue":
        return None
    if args.leave:
        if args.template:
            raise InvalidInput("--template is for entering rescue, not for --leave")
        leave(eng, args.ctid, start=args.start, wait_boot=args.wait, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} left rescue mode" + (" and started" if args.start else ""))
        return 0
    if args.start:
        raise InvalidInput("--start goes with --leave")
    info = enter(eng, args.ctid, template=args.template, wait_boot=args.wait, progress=progress)
    print(f"VE {info.ctid} is in rescue mode ({info.extra['rescue']['template']}): its own root is at /mnt; "
          f"vzctl rescue {info.ctid} --leave ends it")
    return 0
