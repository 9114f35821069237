"""Command line of snapshots, clones, backups, restores and reinstalls (vzctl), and vzlist's columns."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from .. import backup as backups
from .. import backupdir, validate
from ..clone import clone
from ..errors import InvalidInput
from ..progress import Progress
from ..reinstall import reinstall
from ..snapshots import SnapshotInfo, snapshot, snapshot_delete, snapshot_list, snapshot_switch
from .common import add_feature_options, feature_params

if TYPE_CHECKING:
    from ..engine import Engine


VZLIST_FIELDS = {
    "snapshots": ("SNAPS", 5, lambda i: i.extra.get("snapshots", 0)),
    "state": ("STATE", 9, lambda i: "suspended" if i.extra.get("suspended") else i.status),
}

COMMANDS = ("snapshot", "snapshot-list", "snapshot-switch", "snapshot-delete", "clone", "backup",
            "backup-list", "backup-verify", "restore", "reinstall")


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v.strip()]


def register_commands(sub) -> None:
    s = sub.add_parser("snapshot", help="take a read-only snapshot of a VE's files (it keeps running)")
    s.add_argument("ctid")
    s.add_argument("--name", help="snapshot name (default: the date and time)")
    s.add_argument("--description", default="")

    s = sub.add_parser("snapshot-list", help="list a VE's snapshots with their time and size")
    s.add_argument("ctid")
    s.add_argument("-j", "--json", action="store_true")

    for cmd, text in (("snapshot-switch", "roll a VE back to a snapshot (stopping and starting it as needed)"),
                      ("snapshot-delete", "delete a snapshot")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("ctid")
        s.add_argument("snapshot", nargs="?", help="snapshot name (or --name)")
        s.add_argument("--name", dest="name")

    s = sub.add_parser("clone", help="make a new VE from a VE (or one of its snapshots), with its own identity")
    s.add_argument("ctid", help="the VE to copy")
    s.add_argument("new_ctid", help="id of the new VE")
    s.add_argument("--linked", action="store_true", help="share blocks with the source (btrfs snapshot)")
    s.add_argument("--hostname", help="the clone's hostname (default: ve<new id>)")
    s.add_argument("--snapshot", help="copy this snapshot of the VE instead of its current files")
    add_feature_options(s, skip=__name__)

    s = sub.add_parser("backup", help="write a backup archive of a VE (taken from a snapshot while it runs)")
    s.add_argument("ctid")
    s.add_argument("--dir", help="directory for the archive (default: <root>/backups)")

    s = sub.add_parser("backup-list", help="list backup archives")
    s.add_argument("ctid", nargs="?")
    s.add_argument("--dir", help="directory to look in (default: <root>/backups)")

    s = sub.add_parser("backup-verify", help="check a backup archive end to end (checksums and manifest)")
    s.add_argument("file")

    s = sub.add_parser("restore", help="restore a backup archive as a VE (its own id unless one is given)")
    s.add_argument("file")
    s.add_argument("ctid", nargs="?", help="id to restore as (default: the id it was taken from)")
    s.add_argument("--force", action="store_true", help="replace an existing VE of that id")

    s = sub.add_parser("reinstall", help="give a VE a fresh system from a template, keeping id, config and addresses")
    s.add_argument("ctid")
    s.add_argument("--ostemplate", help="template to install (default: the VE's own)")
    s.add_argument("--keep", action="append", type=_csv, default=[], metavar="DIR[,DIR]",
                   help="directories to carry over, e.g. home,root")
    s.add_argument("--no-snapshot", action="store_true",
                   help="delete the old root instead of keeping it as a snapshot")


def _print_snapshots(snaps: list[SnapshotInfo], as_json: bool) -> None:
    if as_json:
        json.dump([s.to_dict() for s in snaps], sys.stdout, indent=1)
        print()
        return
    print(f"{'NAME':<28} {'CREATED':<25} {'STATE':<9} {'SIZE':>8} {'OWN':>8}  DESCRIPTION")
    for s in snaps:
        size = validate.human_size(s.referenced) if s.referenced is not None else "-"
        own = validate.human_size(s.exclusive) if s.exclusive is not None else "-"
        print(f"{s.name:<28} {s.created:<25} {s.ve_state or '-':<9} {size:>8} {own:>8}  {s.description}".rstrip())


def _snapshot_arg(args) -> str:
    name = args.name or args.snapshot
    if not name:
        raise InvalidInput(f"{args.command} needs a snapshot name (--name NAME)")
    if args.name and args.snapshot and args.name != args.snapshot:
        raise InvalidInput("give the snapshot name once")
    return name


def run_command(eng: Engine, args: argparse.Namespace, progress: Progress) -> int | None:
    cmd = args.command
    if cmd not in COMMANDS:
        return None
    if cmd == "snapshot":
        snap = snapshot(eng, args.ctid, args.name, args.description, progress=progress)
        print(f"VE {validate.ctid(args.ctid)}: snapshot {snap.name} taken")
    elif cmd == "snapshot-list":
        _print_snapshots(snapshot_list(eng, args.ctid), args.json)
    elif cmd == "snapshot-switch":
        name = _snapshot_arg(args)
        snapshot_switch(eng, args.ctid, name, progress=progress)
        print(f"VE {validate.ctid(args.ctid)} switched to snapshot {name}")
    elif cmd == "snapshot-delete":
        name = _snapshot_arg(args)
        snapshot_delete(eng, args.ctid, name, progress=progress)
        print(f"VE {validate.ctid(args.ctid)}: snapshot {name} deleted")
    elif cmd == "clone":
        info = clone(eng, args.ctid, args.new_ctid, linked=args.linked, hostname=args.hostname,
                     snapshot=args.snapshot, progress=progress, **feature_params(args))
        print(f"VE {info.ctid} created as a {'linked' if args.linked else 'full'} clone of VE "
              f"{validate.ctid(args.ctid)} (hostname {info.hostname})")
    elif cmd == "backup":
        result = backups.backup(eng, args.ctid, args.dir, progress=progress)
        print(result.path)
    elif cmd == "backup-list":
        ctid = validate.ctid(args.ctid) if args.ctid else None
        for b in backupdir.list_backups(eng, args.dir, ctid):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["mtime"]))
            print(f"{when}  {validate.human_size(b['size']):>8}  {b['path']}")
    elif cmd == "backup-verify":
        m = backups.verify(args.file, progress=progress)
        print(f"{args.file}: OK (VE {m['ctid']}, {m['ostemplate']}, taken {m['created']}, {m['files']} files, "
              f"{validate.human_size(m['bytes'])}, sha256 {m['sha256']})")
    elif cmd == "restore":
        info = backups.restore(eng, args.file, args.ctid, force=args.force, progress=progress)
        print(f"VE {info.ctid} restored from {args.file} ({info.status})")
    elif cmd == "reinstall":
        keep = [k for group in args.keep for k in group]
        info = reinstall(eng, args.ctid, args.ostemplate, keep=keep, snapshot=not args.no_snapshot,
                         progress=progress)
        print(f"VE {info.ctid} reinstalled from {info.ostemplate}")
    return 0
