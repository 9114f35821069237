"""OS templates: build a root file system once, cache it as a shifted tarball, import it per pool.

The cache (``TEMPLATE_CACHE``, default /var/cache/vz/templates) is shared by every engine
root on the host, so a test's private root imports a template in seconds instead of
rebuilding it. A cached template whose format is older than its builder's is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import archive, rootfs, validate
from .errors import AlreadyExists, CommandFailed, InvalidInput, NotFound, Unsupported
from .idmap import shift_tree
from .layout import Layout
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .run import run, which
from .storage import Storage

if TYPE_CHECKING:
    from .engine import Engine

COMMON_PACKAGES = [
    "openssh-server", "iproute2", "iputils-ping", "iptables", "procps", "less", "vim-tiny",
    "netbase", "ca-certificates", "psmisc", "passwd", "login", "tzdata",
]


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    description: str
    init: str  # systemd | sysvinit | busybox
    halt_signal: str
    boot_check: str  # shell command inside the VE; exit 0 once the system has booted
    version: int  # bump to make cached builds of older versions rebuild
    suite: str = ""
    packages: tuple[str, ...] = ()

    @property
    def checkpointable(self) -> bool:
        return self.init != "systemd"


SPECS: dict[str, TemplateSpec] = {
    s.name: s
    for s in (
        TemplateSpec(
            name="tiny",
            description="BusyBox system, builds in a second (for tests and quick labs)",
            init="busybox", halt_signal="SIGUSR2", boot_check="test -e /run/vz-booted", version=1,
        ),
        TemplateSpec(
            name="debian-12",
            description="Debian 12 (bookworm) with systemd and OpenSSH",
            init="systemd", halt_signal="SIGRTMIN+3",
            boot_check="s=$(systemctl is-system-running 2>/dev/null); "
                       "[ \"$s\" = running ] || [ \"$s\" = degraded ]",
            version=1, suite="bookworm",
            packages=("systemd", "systemd-sysv", "dbus", "libpam-systemd", *COMMON_PACKAGES),
        ),
        TemplateSpec(
            name="debian-12-sysv",
            description="Debian 12 (bookworm) with sysvinit and OpenSSH: small, fast, checkpointable",
            init="sysvinit", halt_signal="SIGPWR", boot_check="test -e /run/vz-booted",
            version=1, suite="bookworm",
            packages=("sysvinit-core", "sysv-rc", "initscripts", "orphan-sysvinit-scripts", *COMMON_PACKAGES),
        ),
    )
}


@dataclass
class TemplateInfo:
    name: str
    description: str
    init: str
    cached: bool  # built into the host's template cache
    imported: bool  # present in this root's pool
    size: int | None = None
    built_at: str = ""

    @property
    def built(self) -> bool:
        return self.cached

    def to_dict(self) -> dict:
        return dict(self.__dict__, built=self.built)


def debian_mirror() -> str:
    """The Debian mirror: $VZ_DEBIAN_MIRROR, else the host's own apt source, else deb.debian.org."""
    if os.environ.get("VZ_DEBIAN_MIRROR"):
        return os.environ["VZ_DEBIAN_MIRROR"]
    sources = [*list(Path("/etc/apt").glob("sources.list.d/*.sources")), Path("/etc/apt/sources.list")]
    for src in sources:
        with contextlib.suppress(OSError):
            m = re.search(r"(?:URIs:|deb)\s+(https?://\S+/debian)/?\s", src.read_text() + "\n")
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


class TemplateStore:
    def __init__(self, layout: Layout, storage: Storage):
        self.layout = layout
        self.storage = storage
        self.cache = layout.template_cache

    # --- queries --------------------------------------------------------------------------
    def spec(self, name: str) -> TemplateSpec:
        validate.template_name(name)
        if name in SPECS:
            return SPECS[name]
        meta = self._cached_meta(name) or self._local_meta(name)
        if meta:  # a template made from a VE or dropped into the cache
            return TemplateSpec(
                name=name, description=meta.get("description", name), init=meta.get("init", "systemd"),
                halt_signal=meta.get("halt_signal", "SIGRTMIN+3"), boot_check=meta.get("boot_check", "true"),
                version=meta.get("version", 1),
            )
        raise NotFound(f"unknown OS template {name!r}; known: {', '.join(sorted(self.names()))}")

    def names(self) -> list[str]:
        names = set(SPECS)
        if self.cache.is_dir():
            names |= {p.name[: -len(".json")] for p in self.cache.glob("*.json")}
        pool_templates = self.layout.pool / "templates"
        if pool_templates.is_dir():
            names |= {p.name[: -len(".json")] for p in pool_templates.glob("*.json")
                      if self._local_meta(p.name[: -len(".json")])}
        return sorted(names)

    def _cached_meta(self, name: str) -> dict | None:
        try:
            meta = json.loads((self.cache / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if (self.cache / f"{name}.tar.zst").exists() else None

    def _local_meta(self, name: str) -> dict | None:
        """Metadata of a template saved from a VE into this pool only."""
        meta = self._imported_meta(name)
        return meta if meta and meta.get("local") and self.layout.template_root(name).exists() else None

    def _imported_meta(self, name: str) -> dict | None:
        try:
            return json.loads((self.layout.pool / "templates" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def is_fresh(self, name: str) -> bool:
        meta = self._cached_meta(name)
        if not meta:
            return False
        return name not in SPECS or meta.get("version") == SPECS[name].version

    def list(self) -> list[TemplateInfo]:
        out = []
        for name in self.names():
            spec = self.spec(name)
            meta = self._cached_meta(name) or {}
            local = self._local_meta(name)
            meta = meta or local or {}
            out.append(TemplateInfo(
                name=name, description=spec.description, init=spec.init,
                cached=self.is_fresh(name) or bool(local), imported=self._imported_meta(name) is not None,
                size=meta.get("size"), built_at=meta.get("built_at", ""),
            ))
        return out

    # --- build into the cache -------------------------------------------------------------
    @contextlib.contextmanager
    def _build_lock(self, name: str) -> Iterator[None]:
        self.cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cache / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def build(self, name: str, progress: Progress = _quiet, force: bool = False) -> dict:
        """Build template ``name`` into the cache unless a fresh build is there; return its metadata."""
        spec = self.spec(name)
        if name not in SPECS:
            raise Unsupported(f"template {name!r} was imported, not built here; there is nothing to rebuild")
        with self._build_lock(name):
            if not force and self.is_fresh(name):
                progress(100, f"template {name} is already built")
                fresh = self._cached_meta(name)
                assert fresh is not None, "is_fresh() has just read it, under the build lock"
                return fresh
            started = time.monotonic()
            work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=self.cache))
            try:
                tree = work / "rootfs"
                tree.mkdir()
                if spec.init == "busybox":
                    build_busybox(tree, progress)
                else:
                    build_debian(spec, tree, self.cache / "debs", progress)
                progress(80, "shifting owners to the VE id range")
                base, size = self.layout.idmap
                shift_tree(tree, base, size)
                progress(85, "packing the template")
                tmp_tar = work / f"{name}.tar.zst"
                run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--zstd",
                     "-cf", str(tmp_tar), "-C", str(tree), "."], what=f"pack template {name}")
                meta = {
                    "name": name, "description": spec.description, "init": spec.init,
                    "halt_signal": spec.halt_signal, "boot_check": spec.boot_check,
                    "version": spec.version, "idmap_base": base, "idmap_size": size,
                    "size": tmp_tar.stat().st_size,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_seconds": round(time.monotonic() - started, 1),
                }
                os.replace(tmp_tar, self.cache / f"{name}.tar.zst")
                (self.cache / f"{name}.json.tmp").write_text(json.dumps(meta, indent=1))
                os.replace(self.cache / f"{name}.json.tmp", self.cache / f"{name}.json")
                progress(100, f"built template {name} in {meta['build_seconds']} s")
                return meta
            finally:
                shutil.rmtree(work, ignore_errors=True)

    # --- import into this root's pool -----------------------------------------------------
    def ensure(self, name: str, progress: Progress = _quiet, build: bool = True) -> Path:
        """Return the template's read-only root in the pool, importing (and building) it as needed."""
        spec = self.spec(name)
        if self._local_meta(name):
            return self.layout.template_root(name)
        if not self.is_fresh(name):
            if not build or name not in SPECS:
                raise NotFound(f"template {name} is not built yet: run 'vzctl template build {name}'")
            self.build(name, progress)
        cached = self._cached_meta(name)
        assert cached is not None, "is_fresh() has read it, or build() has just written it"
        dest = self.layout.template_root(name)
        imported = self._imported_meta(name)
        if imported and imported.get("built_at") == cached.get("built_at") and dest.exists():
            return dest
        with self._build_lock(f"import-{self.layout.tag}-{name}"):
            imported = self._imported_meta(name)
            if imported and imported.get("built_at") == cached.get("built_at") and dest.exists():
                return dest
            progress(90, f"importing template {spec.name} into the pool")
            tmp = dest.with_name(f".{name}.importing")
            self.storage.delete(tmp)
            with Rollback() as rb:
                self.storage.create(tmp)
                rb.add("remove partial import", lambda: self.storage.delete(tmp))
                # Through the archive filter: a tarball dropped into the cache is no more trusted than a
                # backup (no member outside the tree, no host owners, no device that opens the host's).
                left_out = archive.extract_zst(self.cache / f"{name}.tar.zst", tmp, b".", self.layout.idmap,
                                               f"template {name}", "nothing was imported")
                if left_out:
                    progress(92, archive.left_out_message(left_out))
                old = dest.with_name(f".{name}.old")
                if dest.exists():
                    self.storage.delete(old)
                    os.rename(dest, old)
                os.rename(tmp, dest)
                self.storage.set_readonly(dest, True)
                meta_path = dest.with_name(f"{name}.json")
                meta_path.write_text(json.dumps(cached, indent=1))
                rb.commit()
                self.storage.delete(old)
            return dest

    def save_from(self, source: Path, name: str, origin: TemplateSpec, description: str = "",
                  replace: bool = False, progress: Progress = _quiet) -> dict:
        """Make template ``name`` from a VE root (a golden image): a read-only snapshot in this pool.

        The copy loses the VE's identity (SSH host keys, machine-id), so every VE made from it
        gets its own. It stays local to this pool; ``vzctl template export`` is not needed for
        VEs on this node.
        """
        validate.template_name(name)
        if name in SPECS:
            raise InvalidInput(f"{name} is a built-in template name; choose another")
        dest = self.layout.template_root(name)
        if (dest.exists() or self._cached_meta(name)) and not replace:
            raise AlreadyExists(f"template {name} already exists")
        tmp = dest.with_name(f".{name}.saving")
        self.storage.delete(tmp)
        progress(20, f"copying the VE's files into template {name}")
        with Rollback() as rb:
            self.storage.clone(source, tmp)
            rb.add("remove partial template", lambda: self.storage.delete(tmp))
            for key in rootfs.list_dir(tmp, "etc/ssh"):
                if key.startswith("ssh_host_"):
                    rootfs.remove_file(tmp, f"etc/ssh/{key}")
            base = self.layout.idmap[0]
            rootfs.write_file(tmp, "etc/machine-id", "", mode=0o444, uid=base, gid=base)
            old = dest.with_name(f".{name}.old")
            if dest.exists():
                self.storage.delete(old)
                self.storage.set_readonly(dest, False)
                os.rename(dest, old)
                rb.add("put the old template back", lambda: os.rename(old, dest))
            os.rename(tmp, dest)
            self.storage.set_readonly(dest, True)
            meta = {
                "name": name, "description": description or f"saved from a {origin.name} VE",
                "init": origin.init, "halt_signal": origin.halt_signal, "boot_check": origin.boot_check,
                "version": 1, "local": True, "origin": origin.name,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (self.layout.pool / "templates" / f"{name}.json").write_text(json.dumps(meta, indent=1))
            rb.commit()
        if old.exists():
            self.storage.delete(old)
        progress(100, f"template {name} saved")
        return meta

    def remove(self, name: str) -> None:
        validate.template_name(name)
        found = False
        dest = self.layout.template_root(name)
        if dest.exists():
            self.storage.set_readonly(dest, False)
            self.storage.delete(dest)
            found = True
        (self.layout.pool / "templates" / f"{name}.json").unlink(missing_ok=True)
        for suffix in (".tar.zst", ".json"):
            p = self.cache / f"{name}{suffix}"
            if p.exists():
                p.unlink()
                found = True
        if not found:
            raise NotFound(f"template {name} is neither built nor imported")


# --- builders ---------------------------------------------------------------------------------

def _busybox_binary() -> Path:
    for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if p.exists():
            head = p.read_bytes()[:65536]
            if b"ld-linux" not in head:
                return p
    raise Unsupported("the tiny template needs a static BusyBox: apt-get install busybox-static")


TINY_INITTAB = """\
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::restart:/sbin/init
"""

TINY_RCS = """\
#!/bin/sh
# Boot a tiny VE: mount what LXC does not, set the hostname, run rc.local, mark booted.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
mkdir -p /run/lock /var/log /var/run
hostname -F /etc/hostname 2>/dev/null
ip link set lo up 2>/dev/null
[ -x /etc/rc.local ] && /etc/rc.local
touch /run/vz-booted
"""


def build_busybox(tree: Path, progress: Progress) -> None:
    progress(10, "assembling a BusyBox system")
    bb = _busybox_binary()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "dev", "run",
              "root", "tmp", "var/log", "var/tmp", "home", "mnt"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    os.chmod(tree / "var/tmp", 0o1777)
    os.chmod(tree / "root", 0o700)
    shutil.copy2(bb, tree / "bin/busybox")
    applets = subprocess.run([str(bb), "--list-full"], capture_output=True, text=True, check=True).stdout
    for rel in applets.split():
        link = tree / rel
        if link.name == "busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(tree / "bin/busybox", link.parent), link)
    files = {
        "etc/inittab": (TINY_INITTAB, 0o644),
        "etc/init.d/rcS": (TINY_RCS, 0o755),
        "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644),
        "etc/group": ("root:x:0:\nnogroup:x:65534:\n", 0o644),
        "etc/shadow": ("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640),
        "etc/hostname": ("localhost\n", 0o644),
        "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n", 0o644),
        "etc/profile": ("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\u@\\h:\\w\\$ '\n", 0o644),
        "etc/fstab": ("", 0o644),
        "etc/machine-id": ("", 0o444),
        "etc/os-release": ('NAME="BusyBox"\nID=busybox\nPRETTY_NAME="vzpanel tiny (BusyBox)"\n', 0o644),
    }
    for rel, (text, mode) in files.items():
        (tree / rel).write_text(text)
        os.chmod(tree / rel, mode)


def build_debian(spec: TemplateSpec, tree: Path, debcache: Path, progress: Progress) -> None:
    if not which("debootstrap"):
        raise Unsupported("building Debian templates needs debootstrap: apt-get install debootstrap")
    debcache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(spec.packages)}",
           f"--cache-dir={debcache}", spec.suite, str(tree), mirror]
    progress(1, f"debootstrap {spec.suite} from {mirror}")
    phases = {"Retrieving": 5, "Validating": 20, "Extracting": 35, "Installing": 45,
              "Unpacking": 55, "Configuring": 65, "Base system installed": 75}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    pct = 1
    last = 0.0
    assert proc.stdout is not None, "stdout=PIPE"
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-20:], line]
        for word, p in phases.items():
            if word in line:
                pct = max(pct, p)
        if line.startswith(("I:", "W:", "E:")) and time.monotonic() - last > 1.0:
            progress(pct, line[3:].strip())
            last = time.monotonic()
    if proc.wait() != 0:
        raise CommandFailed(f"debootstrap {spec.suite} failed: " + " ".join(tail[-3:]), cmd=cmd,
                            returncode=proc.returncode, output="\n".join(tail))
    progress(76, "configuring the template for life in a VE")
    configure_debian(spec, tree)


DEBIAN_BOOTED_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          vz-booted
# Required-Start:    $all
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: Tell the host that the VE has finished booting
### END INIT INFO
case "$1" in start) touch /run/vz-booted ;; esac
exit 0
"""


def configure_debian(spec: TemplateSpec, tree: Path) -> None:
    """Fit a debootstrapped tree for a VE: no host keys, no ttys, clean apt state."""
    (tree / "etc/hostname").write_text("localhost\n")
    (tree / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    (tree / "etc/fstab").write_text("# managed by vzpanel: the VE's mounts come from its host\n")
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    conf_d = tree / "etc/ssh/sshd_config.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "vzpanel.conf").write_text("# the root password is set from the panel\nPermitRootLogin yes\n")
    (tree / "etc/resolv.conf").unlink(missing_ok=True)
    (tree / "etc/resolv.conf").write_text("")
    if spec.init == "systemd":
        masked = ("sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
                  "systemd-journald-audit.socket", "getty@tty1.service", "systemd-udevd.service",
                  "systemd-modules-load.service", "proc-sys-fs-binfmt_misc.automount")
        unit_dir = tree / "etc/systemd/system"
        unit_dir.mkdir(parents=True, exist_ok=True)
        for unit in masked:
            link = unit_dir / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
    else:
        inittab = tree / "etc/inittab"
        lines = [ln for ln in inittab.read_text().splitlines()
                 if not re.match(r"^\d+:\d+:respawn:/sbin/getty", ln)]
        lines += ["# vzpanel: the host's halt signal (SIGPWR) shuts the VE down",
                  "p0::powerfail:/sbin/init 0"]
        inittab.write_text("\n".join(lines) + "\n")
        script = tree / "etc/init.d/vz-booted"
        script.write_text(DEBIAN_BOOTED_SCRIPT)
        os.chmod(script, 0o755)
        run(["chroot", str(tree), "update-rc.d", "vz-booted", "defaults"], what="enable vz-booted")
    run(["chroot", str(tree), "apt-get", "clean"], what="clean apt cache")
    lists = tree / "var/lib/apt/lists"
    for p in lists.glob("*"):
        if p.is_file():
            p.unlink()
    shutil.rmtree(tree / "var/cache/apt/archives/partial", ignore_errors=True)
    if not (tree / "sbin/init").exists() and not (tree / "sbin/init").is_symlink():
        raise InvalidInput(f"template {spec.name}: the built system has no /sbin/init")


def save_ve(engine: Engine, ctid: int, name: str, description: str = "", replace: bool = False,
            progress: Progress = _quiet) -> dict:
    """Save VE ``ctid`` (running or not; a running VE is copied crash-consistently) as a template."""
    conf = engine.config(ctid)
    validate.template_name(name)
    with engine._lock(conf.ctid, "save as template"):
        return engine.templates.save_from(engine.layout.private(conf.ctid), name, engine._spec(conf),
                                          description=description, replace=replace, progress=progress)
