"""A thin wrapper over the LXC command-line tools, always with the engine's own lxcpath."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import CommandFailed
from .run import run

VE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LXC:
    def __init__(self, lxcpath: Path):
        self.lxcpath = lxcpath

    def _args(self, ctid: int) -> list[str]:
        return ["-P", str(self.lxcpath), "-n", str(ctid)]

    def config_path(self, ctid: int) -> Path:
        return self.lxcpath / str(ctid) / "config"

    def write_config(self, ctid: int, lines: list[str]) -> None:
        d = self.lxcpath / str(ctid)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".config.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, d / "config")

    def remove_config(self, ctid: int) -> None:
        shutil.rmtree(self.lxcpath / str(ctid), ignore_errors=True)

    def start(self, ctid: int, logfile: Path) -> None:
        run(["lxc-start", *self._args(ctid), "-o", str(logfile), "-l", "WARN"], what=f"start VE {ctid}",
            timeout=120)

    def stop(self, ctid: int, timeout: int, kill: bool = False) -> None:
        cmd = ["lxc-stop", *self._args(ctid)]
        cmd += ["-k"] if kill else ["-t", str(timeout)]
        try:
            run(cmd, what=f"stop VE {ctid}", timeout=timeout + 30)
        except CommandFailed:
            # The VE ended by itself between our look and the stop (lxc-stop: "is not running"): done.
            if self.state(ctid) != "STOPPED":
                raise

    def halt(self, ctid: int) -> None:
        """Send the VE's init its halt signal (lxc.signal.halt) and return without waiting."""
        run(["lxc-stop", *self._args(ctid), "--nowait"], what=f"stop VE {ctid}", timeout=30)

    def state(self, ctid: int) -> str:
        """RUNNING, STOPPED, STARTING, STOPPING, ... as LXC reports it."""
        proc = run(["lxc-info", *self._args(ctid), "-s", "-H"], check=False)
        return proc.stdout.strip() or "STOPPED"

    def init_pid(self, ctid: int) -> int | None:
        proc = run(["lxc-info", *self._args(ctid), "-p", "-H"], check=False)
        out = proc.stdout.strip()
        return int(out) if out.isdigit() else None

    def attach_argv(self, ctid: int, command: list[str] | None, env: dict[str, str] | None = None) -> list[str]:
        argv = ["lxc-attach", *self._args(ctid), "--clear-env",
                "-v", f"PATH={VE_PATH}", "-v", "HOME=/root", "-v", "USER=root", "-v", "LOGNAME=root"]
        for key, value in (env or {}).items():
            argv += ["-v", f"{key}={value}"]
        if command:
            argv += ["--", *command]
        return argv

    def attach(self, ctid: int, command: list[str], input: str | bytes | None = None,
               timeout: float | None = None, check: bool = False) -> subprocess.CompletedProcess:
        proc = run(self.attach_argv(ctid, command), input=input, timeout=timeout, check=False,
                   what=f"run in VE {ctid}")
        if check and proc.returncode != 0:
            err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
            raise CommandFailed(f"{' '.join(command)} in VE {ctid} failed: {err.strip()[-300:]}",
                                cmd=command, returncode=proc.returncode, output=err)
        return proc
