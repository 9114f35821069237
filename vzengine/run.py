"""Run external tools, turning a failure into a CommandFailed with the command and its output."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence

from .errors import CommandFailed


def run(
    cmd: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: dict | None = None,
    what: str | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd``; raise CommandFailed (naming ``what`` or the command) when it fails."""
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(
            list(cmd),
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=text,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError as e:
        raise CommandFailed(f"{what or cmd[0]}: {cmd[0]} is not installed", cmd=cmd) from e
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(
            f"{what or shlex.join(cmd)}: no answer after {timeout:g} s", cmd=cmd
        ) from e
    if check and proc.returncode != 0:
        out = (proc.stderr or "") if capture else ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        detail = " ".join(out.strip().splitlines()[-3:]) if out.strip() else f"exit status {proc.returncode}"
        raise CommandFailed(
            f"{what or shlex.join(cmd)} failed: {detail}",
            cmd=cmd,
            returncode=proc.returncode,
            output=out,
        )
    return proc


def which(name: str) -> str | None:
    """Return the path of an executable on PATH (or in sbin dirs), or None."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    for d in path.split(":"):
        p = os.path.join(d, name)
        if d and os.access(p, os.X_OK):
            return p
    return None
