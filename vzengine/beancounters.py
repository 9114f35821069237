"""OpenVZ's beancounters (vzctl ubc) computed from a VE's usage and limits, and their table."""

from __future__ import annotations

from . import cgroups, validate
from .knobs import cpu_percent
from .limits import PAGE, Limits

NA = "n/a"  # the kernel neither counts nor limits this per VE

# OpenVZ beancounters a stock kernel cannot enforce per VE, and why (also in RESOURCES.md).
NOT_ENFORCEABLE = {
    "lockedpages": "mlock()ed memory is limited per process (RLIMIT_MEMLOCK), not per cgroup",
    "privvmpages": "no per-cgroup limit on allocated virtual memory; overcommit is host-wide",
    "vmguarpages": "no memory guarantee in a stock kernel (memory.low is best effort, v2 only)",
    "numtcpsock": "sockets are not counted per cgroup",
    "numothersock": "sockets are not counted per cgroup",
    "tcpsndbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "tcprcvbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "othersockbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "dgramrcvbuf": "socket buffers are charged to RAM as a whole, not limited apart",
    "numflock": "file locks are not counted per cgroup",
    "numpty": "no per-cgroup count; LXC caps each VE's devpts at lxc.pty.max",
    "numsiginfo": "pending signals are limited per user (RLIMIT_SIGPENDING), not per cgroup",
    "dcachesize": "dentry cache is charged to RAM as kernel memory, not limited apart",
    "numfile": "open files are limited per process (RLIMIT_NOFILE), not per cgroup",
    "numiptent": "each VE has its own netfilter tables, but no limit on their size",
}


def _pages(n):
    return None if n is None else n // PAGE


def beancounters(u: dict, lim: Limits) -> list[dict]:
    """OpenVZ-style rows: resource, held, maxheld, barrier, limit, failcnt.

    A number, None for "no limit" (barrier/limit) or "unknown", or NA where a stock kernel
    cannot count or enforce it. Units as OpenVZ: pages (4 KiB) for *pages, bytes for kmemsize,
    1 KiB blocks for diskspace, seconds for cpu, bytes for iobytes.
    """
    swap_lim = lim.get("SWAP") if lim.get("RAM") else None

    def row(resource, held, maxheld, barrier, limit, failcnt):
        return {"resource": resource, "held": held, "maxheld": maxheld, "barrier": barrier,
                "limit": limit, "failcnt": failcnt}

    mem_limit = lim.get("RAM")

    def kblocks(n):
        return None if n is None else n // 1024

    rows = [
        row("kmemsize", u.get("kmem_bytes"), u.get("kmem_peak_bytes"), NA, NA, NA),
        row("lockedpages", NA, NA, NA, NA, NA),
        row("privvmpages", NA, NA, NA, NA, NA),
        row("shmpages", _pages(u.get("memory_shmem_bytes")), NA, NA, NA, NA),
        row("numproc", u.get("nproc") or 0, u.get("nproc_peak"), lim.get("NUMPROC"), lim.get("NUMPROC"),
            u.get("nproc_failcnt") or 0),
        row("physpages", _pages(u.get("memory_bytes")) or 0, _pages(u.get("memory_peak_bytes")),
            _pages(mem_limit), _pages(mem_limit), u.get("memory_failcnt") or 0),
        row("vmguarpages", NA, NA, NA, NA, NA),
        row("oomguarpages", _pages(u.get("memory_bytes")) or 0, _pages(u.get("memory_peak_bytes")), NA, NA,
            u.get("oom_kills") or 0),
        row("swappages", _pages(u.get("swap_bytes")), _pages(u.get("swap_peak_bytes")),
            _pages(swap_lim), _pages(swap_lim), u.get("swap_failcnt") if cgroups.swap_accounting() else NA),
    ]
    for name in ("numtcpsock", "numflock", "numpty", "numsiginfo", "tcpsndbuf", "tcprcvbuf",
                 "othersockbuf", "dgramrcvbuf", "numothersock", "dcachesize", "numfile", "numiptent"):
        rows.append(row(name, NA, NA, NA, NA, NA))
    rows += [
        row("diskspace", kblocks(u.get("disk_bytes")), NA, kblocks(lim.get("DISKSPACE")),
            kblocks(lim.get("DISKSPACE")), NA),
        row("diskinodes", NA, NA, NA, NA, NA),
        row("cpu", round(u["cpu_seconds"]) if u.get("cpu_seconds") is not None else 0, NA,
            NA, cpu_percent(lim), u.get("cpu_throttled") or 0),
        row("iobytes", (u.get("io_read_bytes") or 0) + (u.get("io_write_bytes") or 0), NA,
            NA, lim.get("IOLIMIT"), NA),
    ]
    return rows


OPENVZ_UNLIMITED = 9223372036854775807
HUMAN_BYTES = {"kmemsize": 1, "shmpages": PAGE, "physpages": PAGE, "oomguarpages": PAGE, "swappages": PAGE,
               "diskspace": 1024, "iobytes": 1}


def format_beancounters(ctid: int, rows: list[dict], human: bool = False) -> str:
    cols = ("held", "maxheld", "barrier", "limit", "failcnt")

    def cell(r, col):
        v = r[col]
        if v == NA:
            return NA
        if v is None:
            if col in ("barrier", "limit"):
                return "unlimited" if human else str(OPENVZ_UNLIMITED)
            return "-"
        if human and col != "failcnt" and r["resource"] in HUMAN_BYTES:
            return validate.human_size(v * HUMAN_BYTES[r["resource"]])
        return str(v)

    lines = [f"{'uid':>10}  {'resource':<13}" + "".join(f"{c:>20}" for c in cols)]
    for i, r in enumerate(rows):
        lead = f"{ctid:>9}:" if i == 0 else " " * 10
        lines.append(f"{lead}  {r['resource']:<13}" + "".join(f"{cell(r, c):>20}" for c in cols))
    return "\n".join(lines)
