"""vzctl: create, start, stop, configure and destroy VEs (OpenVZ-style command line)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from .. import templates, validate
from ..errors import InvalidInput, NotFound
from .common import (
    Parser,
    add_feature_options,
    add_global_options,
    cli_modules,
    feature_params,
    main_wrapper,
    make_engine,
    progress_printer,
)

PROG = "vzctl"

# The features' command line modules (vzengine.cli.<feature>, see common.py) add options and commands.


def _userpasswd(value: str) -> tuple[str, str]:
    return validate.userpasswd(value)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Manage Virtual Environments (VEs).")
    add_global_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("create", help="create a VE from an OS template")
    c.add_argument("ctid")
    c.add_argument("--ostemplate", help="OS template (default: DEFAULT_TEMPLATE in vz.conf)")
    c.add_argument("--hostname")
    c.add_argument("--userpasswd", action="append", default=[], metavar="USER:PASSWORD")
    c.add_argument("--nameserver", action="append", default=[], metavar="ADDRESS")
    c.add_argument("--onboot", choices=["yes", "no"], default="no")
    add_feature_options(c)

    s = sub.add_parser("start", help="start a VE (or, with --onboot, every VE marked to start at boot)")
    s.add_argument("ctid", nargs="?")
    s.add_argument("--wait", action="store_true", help="return once the VE has finished booting")
    s.add_argument("--onboot", action="store_true", help="start all VEs whose ONBOOT is yes")

    s = sub.add_parser("stop", help="shut a VE down cleanly (killing it after a timeout)")
    s.add_argument("ctid")
    s.add_argument("--fast", action="store_true", help="kill its processes at once")
    s.add_argument("--timeout", type=int, metavar="SECONDS")

    s = sub.add_parser("restart", help="stop and start a VE")
    s.add_argument("ctid")
    s.add_argument("--wait", action="store_true")

    for name in ("destroy", "delete"):
        s = sub.add_parser(name, help="stop a VE and remove it with all its files")
        s.add_argument("ctid")

    s = sub.add_parser("status", help="say whether a VE exists and runs")
    s.add_argument("ctid")

    s = sub.add_parser("exec", help="run a command line inside a running VE as root")
    s.add_argument("ctid")
    s.add_argument("cmd", nargs=argparse.REMAINDER)

    s = sub.add_parser("enter", help="open a root shell inside a running VE")
    s.add_argument("ctid")

    s = sub.add_parser("console", help="watch a VE's console (systemd VEs: boot and shutdown messages)")
    s.add_argument("ctid")
    s.add_argument("--log", action="store_true", help="print what the console showed (this run and the last)")

    s = sub.add_parser("set", help="change a VE's parameters (live when it runs; --save keeps them)")
    s.add_argument("ctid")
    s.add_argument("--hostname")
    s.add_argument("--userpasswd", action="append", type=_userpasswd, metavar="USER:PASSWORD")
    s.add_argument("--nameserver", action="append", metavar="ADDRESS")
    s.add_argument("--searchdomain")
    s.add_argument("--onboot", choices=["yes", "no"])
    s.add_argument("--save", action="store_true", help="store the change in the VE's config")
    add_feature_options(s)

    t = sub.add_parser("template", help="list, build or remove OS templates")
    tsub = t.add_subparsers(dest="template_command", required=True, metavar="ACTION")
    tsub.add_parser("list", help="list known templates")
    b = tsub.add_parser("build", help="build (or rebuild with --force) templates into the cache")
    b.add_argument("names", nargs="+")
    b.add_argument("--force", action="store_true")
    r = tsub.add_parser("remove", help="remove a template from the cache and the pool")
    r.add_argument("name")
    sv = tsub.add_parser("save", help="save a VE as a new template (a golden image)")
    sv.add_argument("ctid")
    sv.add_argument("name")
    sv.add_argument("--description", default="")
    sv.add_argument("--replace", action="store_true", help="replace an existing template of that name")

    pl = sub.add_parser("pool", help="the storage pool")
    psub = pl.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    g = psub.add_parser("grow", help="grow the pool image (online)")
    g.add_argument("size")
    psub.add_parser("info", help="show the pool's backend and usage")
    for mod in cli_modules():
        if hasattr(mod, "register_commands"):
            mod.register_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_wrapper(PROG, lambda: run_command(args))


def run_command(args) -> int:
    eng = make_engine(args)
    progress = progress_printer(args.quiet)
    cmd = args.command
    if cmd == "create":
        users = [_userpasswd(u) for u in args.userpasswd]
        info = eng.create(args.ctid, ostemplate=args.ostemplate, hostname=args.hostname, userpasswd=users,
                          nameserver=args.nameserver, onboot=args.onboot == "yes", progress=progress,
                          **feature_params(args))
        print(f"VE {info.ctid} created ({info.ostemplate}, hostname {info.hostname})")
    elif cmd == "start":
        if args.onboot:
            if args.ctid:
                raise InvalidInput("give either a VE id or --onboot, not both")
            failed = eng.start_onboot(progress=progress)
            for ctid, err in failed:
                print(f"VE {ctid}: {err}", file=sys.stderr)
            return 1 if failed else 0
        if not args.ctid:
            raise InvalidInput("start needs a VE id (or --onboot)")
        eng.start(args.ctid, wait_boot=args.wait, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} started")
    elif cmd == "stop":
        eng.stop(args.ctid, timeout=args.timeout, fast=args.fast, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} stopped")
    elif cmd == "restart":
        eng.restart(args.ctid, progress=progress, wait_boot=args.wait)
        print(f"VE {validate.ctid(args.ctid)} restarted")
    elif cmd in ("destroy", "delete"):
        eng.destroy(args.ctid, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} destroyed")
    elif cmd == "status":
        ctid = validate.ctid(args.ctid)
        if not eng.exists(ctid):
            print(f"VE {ctid} deleted unmounted down")
        else:
            info = eng.status(ctid)
            print(f"VE {ctid} exist mounted {info.status}")
    elif cmd == "exec":
        if not args.cmd:
            raise InvalidInput("exec needs a command to run")
        return subprocess.run(eng.exec_argv(args.ctid, args.cmd), check=False).returncode
    elif cmd == "enter":
        argv = eng.enter_argv(args.ctid, term=os.environ.get("TERM"))
        print(f"entered into VE {validate.ctid(args.ctid)}", file=sys.stderr)
        os.execvp(argv[0], argv)
    elif cmd == "console":
        return console_command(eng, args)
    elif cmd == "set":
        onboot = None if args.onboot is None else args.onboot == "yes"
        extra = feature_params(args)
        core = (args.hostname, args.userpasswd, args.nameserver, args.searchdomain, onboot)
        if all(v is None for v in core) and not extra:
            raise InvalidInput("set needs at least one parameter to change")
        eng.set(args.ctid, hostname=args.hostname, userpasswd=args.userpasswd, nameserver=args.nameserver,
                searchdomain=args.searchdomain, onboot=onboot, save=args.save, progress=progress, **extra)
        print(f"VE {validate.ctid(args.ctid)} updated" + ("" if args.save else " (not saved)"))
    elif cmd == "template":
        return template_command(eng, args, progress)
    elif cmd == "pool":
        return pool_command(eng, args)
    else:
        for mod in cli_modules():
            if hasattr(mod, "run_command"):
                rc = mod.run_command(eng, args, progress)
                if rc is not None:
                    return rc
        raise InvalidInput(f"unknown command {cmd!r}")
    return 0


def console_command(eng, args) -> int:
    if args.log:
        ctid = eng.config(args.ctid).ctid
        log = eng.layout.console_log(ctid)
        runs = [p for p in (log.with_name(log.name + ".1"), log) if p.exists()]
        if not runs:
            raise NotFound(f"VE {ctid} has no console log (only VEs whose template cannot be checkpointed "
                           "have a console)")
        for path in runs:
            sys.stdout.write(path.read_text(errors="replace"))
        return 0
    argv = eng.console_argv(args.ctid)
    print(f"attached to the console of VE {validate.ctid(args.ctid)}: its output, with no login on it "
          "(vzctl enter gives a shell); Ctrl-a q detaches", file=sys.stderr)
    os.execvp(argv[0], argv)


def template_command(eng, args, progress) -> int:
    if args.template_command == "list":
        print(f"{'NAME':<18} {'INIT':<9} {'BUILT':<6} {'SIZE':>8}  DESCRIPTION")
        for t in eng.templates.list():
            size = validate.human_size(t.size) if t.size else "-"
            print(f"{t.name:<18} {t.init:<9} {'yes' if t.cached else 'no':<6} {size:>8}  {t.description}")
    elif args.template_command == "build":
        for name in args.names:
            meta = eng.templates.build(name, progress=progress, force=args.force)
            print(f"template {name}: built {meta['built_at']}")
    elif args.template_command == "save":
        meta = templates.save_ve(eng, args.ctid, args.name, description=args.description,
                                 replace=args.replace, progress=progress)
        print(f"template {meta['name']} saved from VE {validate.ctid(args.ctid)}")
    elif args.template_command == "remove":
        eng.ensure_ready()
        eng.templates.remove(args.name)
        print(f"template {args.name} removed")
    return 0


def pool_command(eng, args) -> int:
    eng.ensure_ready()
    if args.pool_command == "grow":
        size = eng.storage.grow(args.size)
        print(f"pool grown to {validate.human_size(size)}")
    else:
        info = eng.storage.pool_info()
        print(f"backend {info['backend']}, at {info['path']}")
        print(f"size {validate.human_size(info['size_bytes'])}, free {validate.human_size(info['free_bytes'])}")
        print_quota_info(info)
    return 0


def print_quota_info(info: dict) -> None:
    if not info["quota_enabled"]:
        print(f"quota: off ({info['quota_problem']})")
    else:
        state = "consistent" if info["quota_consistent"] is not False else "INCONSISTENT"
        print(f"quota: on, {state}, " + ("enforced" if info["quota_enforced"] else "NOT ENFORCED"))
        print(f"quota mode: {info.get('quota_mode')}" + (f" ({info['quota_fallback']})" if info.get("quota_fallback") else ""))
    if info["quota_inconsistent_seen_at"]:
        print(f"quota last found inconsistent at {info['quota_inconsistent_seen_at']}, rescanned at "
              f"{info['quota_rescanned_at']} in {info['quota_rescan_seconds']:g} s"
              + (f": {info['quota_rescan_error']}" if info["quota_rescan_error"] else ""))
    for sub in info["nested_subvolumes"]:
        size = validate.human_size(sub["referenced_bytes"]) if sub["referenced_bytes"] is not None else "?"
        print(f"nested subvolume {sub['path']} ({size}): outside every VE's quota")
    if info["quota_enabled"] and info["quota_problem"]:
        print(f"warning: {info['quota_problem']}")


if __name__ == "__main__":
    sys.exit(main())
