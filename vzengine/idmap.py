"""Id maps: shift a tree's owners to IDMAP_BASE (how VE files are stored), and give each VE its own
host id range (what its processes run as)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StateError

_CAP_XATTR = "security.capability"
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xFF000000


def _v3_caps(blob: bytes, rootid: int) -> bytes:
    """Turn file capabilities into v3 ones owned by ``rootid``, so they work inside the VE."""
    magic = struct.unpack_from("<I", blob)[0]
    flags = magic & ~_VFS_CAP_REVISION_MASK
    data = blob[4:20]
    return struct.pack("<I", _VFS_CAP_REVISION_3 | flags) + data + struct.pack("<I", rootid)


def shift_tree(top: Path, base: int, size: int = 65536) -> int:
    """Add ``base`` to every owner below ``top`` that is still in 0..size-1; return files changed.

    chown clears set-id bits and file capabilities, so both are put back afterwards.
    """
    changed = 0

    def shift(path: str, st: os.stat_result) -> None:
        nonlocal changed
        uid = st.st_uid + base if st.st_uid < size else st.st_uid
        gid = st.st_gid + base if st.st_gid < size else st.st_gid
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        caps = None
        if stat.S_ISREG(st.st_mode):
            try:
                caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
            except OSError:
                caps = None
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps and len(caps) >= 20:
            os.setxattr(path, _CAP_XATTR, _v3_caps(caps, base), follow_symlinks=False)
        changed += 1

    shift(str(top), os.lstat(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            shift(p, os.lstat(p))
    return changed


# --- host-wide id ranges: one per VE, never shared --------------------------------------------
#
# Every VE runs as its own block of 65536 host ids, [H, H+65536), taken from one region that is
# reserved for root in /etc/subuid and /etc/subgid (so shadow never hands it to a user, and LXC's
# newuidmap accepts it). A range is held by a slot file <RANGE_DIR>/<H> made with O_EXCL, naming
# the engine root and VE that own it; every engine root on the host (a node's, each test's)
# allocates from the same directory, so two VEs never share a host uid.

RANGE_DIR = Path("/var/lib/vz-idmap")
RANGE_FIRST = 1_000_000_000
RANGE_SIZE = 65536
RANGE_SLOTS = 16384  # up to 2^30 ids: the region ends below 2^31
STALE_AFTER = 600  # seconds: a slot whose VE config never appeared is abandoned (create crashed)
_SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
_subids_checked = False


def range_end() -> int:
    return RANGE_FIRST + RANGE_SLOTS * RANGE_SIZE


def overlaps_region(base: int, size: int) -> bool:
    return base < range_end() and base + size > RANGE_FIRST


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the host-wide allocator lock (an flock on <RANGE_DIR>/.lock)."""
    RANGE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(RANGE_DIR / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _owner_key(root: Path, ctid: int) -> str:
    return f"{os.path.realpath(root)}\n{ctid}\n"


def _read_owner(h: int) -> str | None:
    try:
        return (RANGE_DIR / str(h)).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _slots() -> dict[int, str]:
    """Every held range: base -> owner key."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for p in RANGE_DIR.iterdir():
            if p.name.isdigit():
                with contextlib.suppress(FileNotFoundError):
                    out[int(p.name)] = p.read_text()
    return out


def ensure_subids() -> None:
    """Reserve the region for root in /etc/subuid and /etc/subgid (once), refusing a clash."""
    global _subids_checked
    if _subids_checked:
        return
    want = f"root:{RANGE_FIRST}:{RANGE_SLOTS * RANGE_SIZE}"
    for path in _SUBID_FILES:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.splitlines()
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or line.strip() == want:
                continue
            if parts[0] != "root" and overlaps_region(int(parts[1]), int(parts[2])):
                raise StateError(f"{path} gives ids {parts[1]}-{int(parts[1]) + int(parts[2]) - 1} to "
                                 f"{parts[0]}, inside the region VEs take their id ranges from "
                                 f"({RANGE_FIRST}-{range_end() - 1}): remove that line")
        if want not in (ln.strip() for ln in lines):
            with open(path, "a") as f:
                f.write(("\n" if text and not text.endswith("\n") else "") + want + "\n")
            os.chmod(path, 0o644)
    _subids_checked = True


def _alive_in(bases: set[int]) -> set[int]:
    """Which of these ranges some host process still runs in (its real or effective uid)."""
    alive: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                uids = next((ln.split()[1:3] for ln in f if ln.startswith("Uid:")), [])
        except OSError:
            continue
        for uid in map(int, uids):
            if RANGE_FIRST <= uid < range_end():
                base = RANGE_FIRST + (uid - RANGE_FIRST) // RANGE_SIZE * RANGE_SIZE
                if base in bases:
                    alive.add(base)
    return alive


def _drop_stale(slots: dict[int, str]) -> None:
    """Free ranges whose VE is gone (its root or config removed without a destroy), unless in use."""
    now = time.time()
    stale = set()
    for base, key in slots.items():
        root, _, ctid = key.strip().partition("\n")
        if not ctid.isdigit() or not os.path.isdir(root):
            stale.add(base)
        elif not os.path.exists(os.path.join(root, "conf", f"{ctid}.conf")):
            with contextlib.suppress(FileNotFoundError):
                if now - (RANGE_DIR / str(base)).stat().st_mtime > STALE_AFTER:
                    stale.add(base)
    if not stale:
        return
    for base in stale - _alive_in(stale):
        (RANGE_DIR / str(base)).unlink(missing_ok=True)
        del slots[base]


def _next_slot() -> int:
    try:
        value = (RANGE_DIR / ".next").read_text().strip()
    except FileNotFoundError:
        return 0
    return int(value) % RANGE_SLOTS if value.isdigit() else 0


def claim(root: Path, ctid: int, current: int | None = None) -> int:
    """Return the id range base of VE ``ctid`` of ``root``: ``current`` if it holds that one, the
    range it holds otherwise, or a free one taken now (a copied config's range is never reused)."""
    key = _owner_key(root, ctid)
    with _locked():
        ensure_subids()
        if current is not None and _read_owner(current) == key:
            return current
        slots = _slots()
        mine = sorted(b for b, k in slots.items() if k == key)
        if mine:
            return mine[0]
        _drop_stale(slots)
        # Round robin, not lowest first: a freed range is handed out again only after all the others,
        # so whatever might still run as a destroyed VE's root is not soon the root of a new one.
        start = _next_slot()
        for n in range(RANGE_SLOTS):
            i = (start + n) % RANGE_SLOTS
            base = RANGE_FIRST + i * RANGE_SIZE
            if base in slots:
                continue
            try:
                fd = os.open(RANGE_DIR / str(base), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(key)
            (RANGE_DIR / ".next").write_text(f"{(i + 1) % RANGE_SLOTS}\n")
            return base
    raise StateError(f"all {RANGE_SLOTS} VE id ranges of this host are taken (see {RANGE_DIR})")


def claim_exact(root: Path, ctid: int, base: int) -> bool:
    """Hold the range at ``base`` for VE ``ctid`` of ``root`` (it already does, or it is free); return
    whether it does now."""
    if not RANGE_FIRST <= base < range_end() or (base - RANGE_FIRST) % RANGE_SIZE:
        return False
    key = _owner_key(root, ctid)
    with _locked():
        ensure_subids()
        if _read_owner(base) == key:
            return True
        try:
            fd = os.open(RANGE_DIR / str(base), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return True


def holds(root: Path, ctid: int, base: int) -> bool:
    """Whether VE ``ctid`` of ``root`` holds the range starting at ``base``."""
    return _read_owner(base) == _owner_key(root, ctid)


def release(root: Path, ctid: int) -> list[int]:
    """Free every range VE ``ctid`` of ``root`` holds; return their bases."""
    key = _owner_key(root, ctid)
    with _locked():
        freed = [b for b, k in _slots().items() if k == key]
        for base in freed:
            (RANGE_DIR / str(base)).unlink(missing_ok=True)
    return freed


def release_root(root: Path) -> list[int]:
    """Free every range held by a VE of ``root`` (the root is being purged); return their bases."""
    prefix = os.path.realpath(root) + "\n"
    with _locked():
        freed = [b for b, k in _slots().items() if k.startswith(prefix)]
        for base in freed:
            (RANGE_DIR / str(base)).unlink(missing_ok=True)
    return freed
