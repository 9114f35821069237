"""What vzctl and vzlist share: engine construction, progress output, error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..engine import Engine
from ..errors import VZError


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
