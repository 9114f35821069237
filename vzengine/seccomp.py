"""The seccomp profile every VE runs under: LXC's default denials plus the calls that escape the disk quota.

A btrfs qgroup limit covers one subvolume. A VE's root could otherwise create a subvolume or
a snapshot inside its own tree (each gets a qgroup of its own, with no limit), or reflink and
dedupe files so that what it holds is far more than what its qgroup counts (a backup, restore
or copy of that VE then expands past its quota). The profile refuses, for every VE:

- the btrfs ioctls that create subvolumes and snapshots, with EPERM (systemd-tmpfiles and
  similar tools then fall back to a plain directory);
- FICLONE, FICLONERANGE and FIDEDUPERANGE (the btrfs clone ioctls under their generic names),
  with EOPNOTSUPP, so ``cp --reflink=auto`` falls back to a real copy that counts;
- copy_file_range, with ENOSYS, because on btrfs it shares extents like a reflink; every
  copying tool falls back to read and write when the call is missing.

LXC reads one profile per container, and ``common.conf`` names its own default: the file this
module writes is LXC's default profile followed by these rules, so both sets of denials hold.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .layout import Layout

LXC_DEFAULT_PROFILE = Path("/usr/share/lxc/config/common.seccomp")

# LXC 5.0's common.seccomp, used when the host's copy is missing or not a v2 denylist.
FALLBACK_BASE = """\
2
denylist
reject_force_umount  # comment this to allow umount -f;  not recommended
[all]
kexec_load errno 1
open_by_handle_at errno 1
init_module errno 1
finit_module errno 1
delete_module errno 1
"""


def _ioc(direction: int, nr: int, size: int) -> int:
    """An ioctl request number of the btrfs type (0x94), as _IOC() in asm-generic/ioctl.h builds it."""
    return (direction << 30) | (size << 16) | (0x94 << 8) | nr


_IOW, _IOWR = 1, 3

# linux/btrfs.h: btrfs_ioctl_vol_args and btrfs_ioctl_vol_args_v2 are 4096 bytes.
SUBVOLUME_IOCTLS = {
    "BTRFS_IOC_SNAP_CREATE": _ioc(_IOW, 1, 4096),
    "BTRFS_IOC_SUBVOL_CREATE": _ioc(_IOW, 14, 4096),
    "BTRFS_IOC_SNAP_CREATE_V2": _ioc(_IOW, 23, 4096),
    "BTRFS_IOC_SUBVOL_CREATE_V2": _ioc(_IOW, 24, 4096),
}
# linux/fs.h; the same numbers as BTRFS_IOC_CLONE, BTRFS_IOC_CLONE_RANGE, BTRFS_IOC_FILE_EXTENT_SAME.
CLONE_IOCTLS = {
    "FICLONE": _ioc(_IOW, 9, 4),
    "FICLONERANGE": _ioc(_IOW, 13, 32),
    "FIDEDUPERANGE": _ioc(_IOWR, 54, 24),
}


def quota_rules() -> list[str]:
    """The profile lines (LXC seccomp v2) that close the quota escapes."""
    lines = ["# vzengine: calls that would let a VE hold more than its disk quota (vzengine/seccomp.py)", "[all]"]
    # The kernel reads the request as a 32-bit int: compare only the low 32 bits, or a request
    # with junk in the high half would pass the filter and still reach the ioctl.
    # (A comment only on a line of its own: LXC reads anything after the rule as more arguments.)
    for name, nr in SUBVOLUME_IOCTLS.items():
        lines += [f"# {name}", f"ioctl errno {errno.EPERM} [1,{nr:#x},SCMP_CMP_MASKED_EQ,0xffffffff]"]
    for name, nr in CLONE_IOCTLS.items():
        lines += [f"# {name}", f"ioctl errno {errno.EOPNOTSUPP} [1,{nr:#x},SCMP_CMP_MASKED_EQ,0xffffffff]"]
    lines.append(f"copy_file_range errno {errno.ENOSYS}")
    return lines


def _base_profile() -> str:
    """LXC's default profile text, if the host has a v2 denylist one; the 5.0 default otherwise."""
    try:
        text = LXC_DEFAULT_PROFILE.read_text()
    except OSError:
        return FALLBACK_BASE
    head = text.splitlines()[:2]
    if len(head) == 2 and head[0].strip() == "2" and head[1].split()[:1] in (["denylist"], ["blacklist"]):
        return text if text.endswith("\n") else text + "\n"
    return FALLBACK_BASE


def profile_text() -> str:
    return _base_profile() + "\n".join(quota_rules()) + "\n"


def profile_path(layout: Layout) -> Path:
    return layout.root / "ve.seccomp"


def write_profile(layout: Layout) -> Path:
    """Write the VE profile under the engine root when it differs; return its path."""
    path = profile_path(layout)
    text = profile_text()
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def lxc_lines(layout: Layout) -> list[str]:
    """The LXC config lines that put a VE under the profile (after common.conf, whose profile they replace)."""
    return [f"lxc.seccomp.profile = {write_profile(layout)}"]
