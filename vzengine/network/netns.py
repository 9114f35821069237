"""Finding a VE's network namespace, and holding it while its counts are still to be read.

A VE that CRIU restored is watched by lxc-checkpoint's monitor, which keeps no handle on the
VE's network namespace: when the VE stops, the namespace and the veth with its counts are gone
before the stop hook runs. So the engine holds that namespace itself (a bind mount under
<rundir>/netns/<ctid>, as `ip netns` does) until the stop hook or the engine has read the counts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import cgroups
from ..errors import StateError

if TYPE_CHECKING:
    from ..engine import Engine
    from ..layout import Layout

MS_BIND = 4096
MNT_DETACH = 2
_libc_handle: list[Any] = []  # the ctypes.CDLL of libc, once loaded


def _libc() -> Any:
    if not _libc_handle:
        import ctypes
        import ctypes.util

        _libc_handle.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
    return _libc_handle[0]


class NetnsMixin:
    """NetworkFeature's namespace handling (it provides ``layout`` and ``engine``)."""

    if TYPE_CHECKING:  # what NetworkFeature provides
        engine: Engine

        @property
        def layout(self) -> Layout: ...

    def _netns_handle(self, ctid: int) -> Path:
        return self.layout.rundir / "netns" / str(ctid)

    def _hold_netns(self, ctid: int, nsfd: int) -> None:
        handle = self._netns_handle(ctid)
        self._release_netns(ctid)
        handle.parent.mkdir(parents=True, exist_ok=True)
        handle.touch()
        if _libc().mount(f"/proc/self/fd/{nsfd}".encode(), str(handle).encode(), None, MS_BIND, None) != 0:
            handle.unlink(missing_ok=True)  # then this run's counts end with it, as before

    def _release_netns(self, ctid: int) -> None:
        handle = self._netns_handle(ctid)
        if handle.exists():
            _libc().umount2(str(handle).encode(), MNT_DETACH)
            with contextlib.suppress(OSError):
                handle.unlink()

    def _release_all_netns(self) -> None:
        """Let go of every namespace this root holds (purge)."""
        handles = self.layout.rundir / "netns"
        if handles.is_dir():
            for p in handles.iterdir():
                if p.name.isdigit():
                    self._release_netns(int(p.name))
            with contextlib.suppress(OSError):
                handles.rmdir()

    def _init_pid(self, ctid: int) -> int | None:
        """The host pid of the VE's init: from its cgroup (cheap), else ask LXC."""
        procs = cgroups.read("pids", self.layout.cgroup_dir(ctid), "cgroup.procs") or \
            cgroups.read("memory", self.layout.cgroup_dir(ctid), "cgroup.procs") or ""
        for pid in procs.split():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            if line.split()[-1] == "1":
                                return int(pid)
                            break
            except OSError:
                continue
        return self.engine.lxc.init_pid(ctid)

    def _open_netns(self, ctid: int) -> int | None:
        """A descriptor of the running VE's network namespace; None when it is not running."""
        pid = self._init_pid(ctid)
        if pid is None:
            return None
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:  # never configure the host's
            os.close(fd)
            raise StateError(f"VE {ctid} has no network namespace of its own")
        return fd
