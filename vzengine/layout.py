"""Where an engine root keeps its state, and the host-wide settings read from it.

Everything the engine creates on the host is named after its root (see ``Layout.tag``),
so two roots (a node's and a test's) never collide and a root can be removed whole.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import validate
from .errors import InvalidInput

DEFAULT_ROOT = "/var/lib/vz"
DEFAULT_TEMPLATE_CACHE = "/var/cache/vz/templates"

# Settings in <root>/vz.conf; each can be overridden by the environment variable VZ_<NAME>.
DEFAULTS = {
    "STORAGE": "btrfs-loop",  # btrfs-loop | btrfs | dir
    "POOL_SIZE": "20G",  # size of the sparse pool image (btrfs-loop)
    "POOL_PATH": "",  # an existing directory on btrfs (btrfs), or the pool mount point
    "TEMPLATE_CACHE": DEFAULT_TEMPLATE_CACHE,
    "IDMAP_BASE": "100000",
    "IDMAP_SIZE": "65536",
    "DEFAULT_TEMPLATE": "debian-12",
    "STOP_TIMEOUT": "60",
    # Limits of every VE whose own config does not set them (limits.py; "unlimited" or "": none).
    "DEFAULT_RAM": "512M",
    "DEFAULT_SWAP": "256M",  # on top of the RAM
    "DEFAULT_NUMPROC": "512",  # processes and threads
    "DEFAULT_CPUUNITS": "1000",  # CPU weight
    "DEFAULT_DISKSPACE": "10G",  # btrfs pools only
}
STORAGE_KINDS = ("btrfs-loop", "btrfs", "dir")


def read_kv(path: Path) -> dict[str, str]:
    """Read a shell-style KEY="value" file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def write_kv(path: Path, values: dict[str, str], header: str = "") -> None:
    """Write KEY="value" lines atomically (write a temporary file, then rename)."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    for key, value in values.items():
        if any(c in str(value) for c in '"\n\\$`'):
            raise InvalidInput(f"value of {key} must not contain quotes, backslashes, '$', '`' or line breaks")
        lines.append(f'{key}="{value}"')
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


@dataclass
class Layout:
    root: Path
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | os.PathLike | None = None) -> Layout:
        root = Path(root or os.environ.get("VZ_ROOT") or DEFAULT_ROOT).absolute()
        settings = dict(DEFAULTS)
        settings.update(read_kv(root / "vz.conf"))
        for key in DEFAULTS:
            if os.environ.get(f"VZ_{key}"):
                settings[key] = os.environ[f"VZ_{key}"]
        lay = cls(root=root, settings=settings)
        lay.check()
        return lay

    def check(self) -> None:
        if self.storage not in STORAGE_KINDS:
            raise InvalidInput(f"STORAGE={self.storage!r} in vz.conf: use one of {', '.join(STORAGE_KINDS)}")
        validate.size(self.settings["POOL_SIZE"], what="POOL_SIZE", minimum=256 << 20)
        if self.storage == "btrfs" and not self.settings["POOL_PATH"]:
            raise InvalidInput("STORAGE=btrfs needs POOL_PATH, a directory on a btrfs file system")

    # --- settings -------------------------------------------------------------------------
    @property
    def storage(self) -> str:
        return self.settings["STORAGE"]

    @property
    def pool_size(self) -> int:
        return validate.size(self.settings["POOL_SIZE"], what="POOL_SIZE")

    @property
    def idmap(self) -> tuple[int, int]:
        return int(self.settings["IDMAP_BASE"]), int(self.settings["IDMAP_SIZE"])

    @property
    def template_cache(self) -> Path:
        return Path(self.settings["TEMPLATE_CACHE"])

    # --- paths ----------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        """A short name unique to this root, used for host objects (cgroups, interfaces, rules)."""
        return hashlib.sha1(str(self.root).encode()).hexdigest()[:6]

    @property
    def lxcpath(self) -> Path:
        return self.root / "lxc"

    @property
    def confdir(self) -> Path:
        return self.root / "conf"

    @property
    def lockdir(self) -> Path:
        return self.root / "locks"

    @property
    def logdir(self) -> Path:
        return self.root / "logs"

    @property
    def rundir(self) -> Path:
        return self.root / "run"

    def console_log(self, ctid: int) -> Path:
        """Where LXC writes the console output of VE ctid (VEs that cannot be checkpointed have one)."""
        return self.logdir / f"{ctid}.console.log"

    @property
    def pool_image(self) -> Path:
        return self.root / "pool.img"

    @property
    def pool(self) -> Path:
        if self.storage == "btrfs":
            return Path(self.settings["POOL_PATH"])
        return Path(self.settings["POOL_PATH"] or self.root / "pool")

    def private(self, ctid: int) -> Path:
        return self.pool / "private" / str(ctid)

    def template_root(self, name: str) -> Path:
        return self.pool / "templates" / name

    def snapshot_dir(self, ctid: int) -> Path:
        return self.pool / "snapshots" / str(ctid)

    def conf(self, ctid: int) -> Path:
        return self.confdir / f"{ctid}.conf"

    @property
    def mntdir(self) -> Path:
        return self.root / "mnt"

    def ve_mount(self, ctid: int) -> Path:
        """Where VE ctid's root is mounted id-mapped to its own host range (in a root:H 0710 directory)."""
        return self.mntdir / str(ctid) / "root"

    def cgroup_dir(self, ctid: int) -> str:
        """The VE's cgroup, relative to each hierarchy's root."""
        return f"vz-{self.tag}/{ctid}"

    def cgroup_parent(self) -> str:
        return f"vz-{self.tag}"

    def make_dirs(self) -> None:
        for d in (self.root, self.lxcpath, self.confdir, self.lockdir, self.logdir, self.rundir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # VEs' mapped root must traverse to its rootfs; nothing else
