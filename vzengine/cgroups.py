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


# --- limits and accounting (issue 4) --------------------------------------------------------

def version(controller: str) -> int | None:
    """1 when ``controller`` is mounted as a v1 hierarchy, 2 when it is on the unified one, else None."""
    v1, v2 = mounts()
    if controller in v1:
        return 1
    if v2 is not None and controller in v2_controllers():
        return 2
    return None


def write(controller: str, rel: str, name: str, value: str) -> None:
    """Write one value to a cgroup file; raise OSError as the kernel reports it."""
    p = path(controller, rel)
    if p is None:
        raise FileNotFoundError(f"no {controller} cgroup controller on this host")
    fd = os.open(p / name, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_fast(p: str) -> str | None:
    """Read a small cgroup file by path with as few syscalls as possible (accounting hot path)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def has_file(controller: str, name: str, rel: str = "") -> bool:
    """Whether cgroups of ``controller`` have file ``name``.

    The root cgroup lacks most limit files, so this looks in ``rel`` (when it exists), in this
    process's own cgroup on the unified hierarchy, then in the hierarchy's root.
    """
    base = path(controller, "")
    if base is None:
        return False
    candidates = [base / rel] if rel else []
    own = _own_v2_cgroup() if version(controller) == 2 else None
    if own:
        candidates.append(base / own)
    candidates.append(base)
    return any((d / name).exists() for d in candidates if d.is_dir())


def swap_accounting() -> bool:
    """Whether the kernel accounts swap per cgroup (so a VE's swap can be limited)."""
    ver = version("memory")
    if ver == 1:
        return has_file("memory", "memory.memsw.usage_in_bytes")
    if ver == 2:  # memory.swap.* exist in every non-root cgroup when swap accounting is on
        return has_file("memory", "memory.swap.max")
    return False


def _own_v2_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line[3:].strip().lstrip("/")
                    return rel or None
    except OSError:
        pass
    return None


def online_cpus() -> list[int]:
    """The host's online CPUs."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpulist(f.read())
    except OSError:
        return list(range(os.cpu_count() or 1))


def parse_cpulist(text: str) -> list[int]:
    """Parse a kernel CPU list like ``0-3,6``; raise ValueError when it is not one."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(text)
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(text)
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(text)
    return sorted(out)


def format_cpulist(cpus: list[int]) -> str:
    """Format CPUs as a kernel CPU list (``[0, 1, 2, 5]`` -> ``0-2,5``)."""
    out: list[str] = []
    cpus = sorted(set(cpus))
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def flat_keyed(text: str | None) -> dict[str, int]:
    """Parse ``key value`` lines (memory.stat, cpu.stat, pids.events, ...) into ints."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[key] = int(value)
    return out
