"""Command line of resource limits: vzctl's limit options and 'ubc', vzlist's resource columns."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .. import cgroups, validate
from ..beancounters import format_beancounters
from ..limits import PARAMS, is_unlimited
from ..resources import ResourcesFeature


def add_set_options(parser) -> None:
    group = parser.add_argument_group("resource limits (OpenVZ-style; live on a running VE)")
    for p in PARAMS:
        group.add_argument(f"--{p.kwarg}", default=None, metavar=p.metavar, help=p.help)


def set_params(args) -> dict:
    params = {p.kwarg: getattr(args, p.kwarg, None) for p in PARAMS}
    if params.get("swap") is not None and not is_unlimited(params["swap"]) and not cgroups.swap_accounting():
        print("vzctl: warning: this kernel does not account swap per cgroup (boot with swapaccount=1): "
              "--swap is saved but not enforced", file=sys.stderr)
    return params


def register_commands(subparsers) -> None:
    s = subparsers.add_parser("ubc", help="show a VE's resource usage and limits (OpenVZ beancounters)")
    s.add_argument("ctid", nargs="+")
    s.add_argument("-H", "--human", action="store_true", help="sizes in K/M/G instead of OpenVZ's units")


def run_command(eng, args, progress) -> int | None:
    if args.command != "ubc":
        return None
    feature = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    out = []
    for ctid in args.ctid:
        conf = eng.config(ctid)
        out.append(format_beancounters(conf.ctid, feature.beancounters(conf.ctid), human=args.human))
    print("\n".join(out))
    if not args.human:
        print("# units: *pages in 4 KiB pages, kmemsize and iobytes in bytes, diskspace in 1 KiB blocks, "
              "cpu in seconds (limit: percent of one CPU; failcnt: times throttled); n/a: a stock kernel "
              "cannot count or limit it per VE")
    return 0


def _res(i) -> dict:
    return i.extra.get("resources") or {"limits": {}, "usage": {}}


def _used_of(i, used_key: str, limit_key: str) -> str:
    r = _res(i)
    used, limit = r["usage"].get(used_key), r["limits"].get(limit_key)
    u = validate.human_size(used) if used is not None else "-"
    return f"{u}/{validate.human_size(limit) if limit else 'unlim'}"


def _cpu_time(i) -> str:
    s = _res(i)["usage"].get("cpu_seconds")
    return "-" if s is None else f"{s:.1f}s"


def _limit(key: str, fmt: Callable = str) -> Callable:
    def get(i):
        v = _res(i)["limits"].get(key)
        return "-" if v is None else fmt(v)
    return get


VZLIST_FIELDS = {
    "ram": ("RAM", 15, lambda i: _used_of(i, "memory_bytes", "RAM")),
    "swap": ("SWAP", 15, lambda i: _used_of(i, "swap_bytes", "SWAP")),
    "diskspace": ("DISKSPACE", 15, lambda i: _used_of(i, "disk_bytes", "DISKSPACE")),
    "cpu": ("CPU", 9, _cpu_time),
    "cpus": ("CPUS", 4, _limit("CPUS")),
    "cpulimit": ("CPULIM", 6, _limit("CPULIMIT", lambda v: f"{v}%")),
    "cpuunits": ("CPUUNITS", 8, _limit("CPUUNITS")),
    "cpumask": ("CPUMASK", 7, _limit("CPUMASK")),
    "numproc.l": ("NPROC.L", 7, _limit("NUMPROC")),
    "iolimit": ("IOLIMIT", 8, _limit("IOLIMIT", validate.human_size)),
    "oomkills": ("OOMKILLS", 8, lambda i: _res(i)["usage"].get("oom_kills") or 0),
}
