"""Find a VE's cgroup files on cgroup v1, v2 or hybrid hosts, and read them cheaply."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path


@functools.cache
def mounts() -> tuple[dict[str, Path], Path | None]:
    """Return ({v1 controller: mount point}, the cgroup2 mount point or None)."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _source, opts = ([*post.split(), "", "", ""])[:3]
            mnt = Path(fields[4])
            if fstype == "cgroup2" and v2 is None:
                v2 = mnt
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt.startswith("name=") or opt not in ("rw", "ro", "relatime", "noexec", "nosuid", "nodev", "clone_children"):
                        v1.setdefault(opt, mnt)
    return v1, v2


def is_v2_only() -> bool:
    v1, v2 = mounts()
    return not v1 and v2 is not None


def v2_controllers() -> set[str]:
    _, v2 = mounts()
    if v2 is None:
        return set()
    try:
        return set((v2 / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def path(controller: str, rel: str) -> Path | None:
    """Return the directory of cgroup ``rel`` for ``controller``, v1 first, else unified."""
    v1, v2 = mounts()
    if controller in v1:
        return v1[controller] / rel
    if v2 is not None and controller in v2_controllers():
        return v2 / rel
    return None


def read(controller: str, rel: str, name: str) -> str | None:
    p = path(controller, rel)
    if p is None:
        return None
    try:
        with open(p / name) as f:
            return f.read().strip()
    except OSError:
        return None


def all_dirs(rel: str) -> list[Path]:
    """Every existing directory of cgroup ``rel`` across all hierarchies."""
    v1, v2 = mounts()
    roots = set(v1.values())
    if v2 is not None:
        roots.add(v2)
    return [r / rel for r in sorted(roots) if (r / rel).is_dir()]


def remove_tree(rel: str) -> None:
    """Remove empty cgroup directories below and at ``rel`` in every hierarchy."""
    for top in all_dirs(rel):
        for dirpath, _dirnames, _ in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
