"""Command line of checkpoints: vzctl suspend and resume."""

from __future__ import annotations

from .. import checkpoint, validate


def register_commands(sub) -> None:
    s = sub.add_parser("suspend", help="checkpoint a running VE to disk with CRIU and stop it")
    s.add_argument("ctid")
    s = sub.add_parser("resume", help="bring a suspended VE back, processes and all")
    s.add_argument("ctid")


def run_command(eng, args, progress) -> int | None:
    if args.command == "suspend":
        r = checkpoint.suspend(eng, args.ctid, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} suspended ({validate.human_size(r['bytes'])} of images)")
    elif args.command == "resume":
        checkpoint.resume(eng, args.ctid, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} resumed")
    else:
        return None
    return 0
