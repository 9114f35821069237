"""What vzctl and vzlist share: engine construction, progress output, error reporting, and the
command line modules of the engine's features.

Each feature named in vzengine.features.FEATURES may have a module ``vzengine.cli.<name>`` that
extends the command line. It may define:

    add_set_options(parser)           options of 'create', 'set' and 'clone' (they become Engine keyword args)
    set_params(args) -> dict          the values of those options that were given
    register_commands(subparsers)     vzctl commands of its own
    run_command(eng, args, progress)  run one of its commands; return None when it is not its own
    VZLIST_FIELDS                     vzlist columns: name -> (header, width, getter of a VEInfo)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from types import ModuleType

from ..engine import Engine
from ..errors import VZError
from ..features import FEATURES


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other vzctl error."""

    def error(self, message: str):
        prog = self.prog.split()[0]
        self.exit(2, f"{prog}: {message} (see '{self.prog} --help')\n")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="engine state root (default: $VZ_ROOT or /var/lib/vz)")
    parser.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for a VE busy with another operation (default: fail at once)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress")


def make_engine(args) -> Engine:
    return Engine(root=args.root, lock_wait=args.wait_lock)


def progress_printer(quiet: bool) -> Callable[[int, str], None]:
    last = [""]

    def progress(pct: int, msg: str) -> None:
        if quiet or msg == last[0]:
            return
        last[0] = msg
        print(f"[{pct:3d}%] {msg}", file=sys.stderr, flush=True)

    return progress


def main_wrapper(prog: str, fn: Callable[[], int]) -> int:
    try:
        return fn() or 0
    except VZError as e:
        print(f"{prog}: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def cli_modules() -> list[ModuleType]:
    """The command line modules of the features, in FEATURES order (a feature may have none)."""
    out = []
    for name in FEATURES:
        try:
            out.append(importlib.import_module(f"{__package__}.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    return out


def add_feature_options(parser: argparse.ArgumentParser, skip: str | None = None) -> None:
    """Add every feature's options of 'create' and 'set' (but those of module ``skip``)."""
    for mod in cli_modules():
        if hasattr(mod, "add_set_options") and mod.__name__ != skip:
            mod.add_set_options(parser)


def feature_params(args) -> dict:
    """The feature options given on the command line, as Engine keyword arguments."""
    params: dict = {}
    for mod in cli_modules():
        if hasattr(mod, "set_params"):
            params.update({k: v for k, v in mod.set_params(args).items() if v is not None})
    return params
