"""The VE engine: create, start, stop, destroy and configure VEs under one state root."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cgroups, idmap, idmount, rescue, rootfs, validate
from .errors import AlreadyExists, CommandFailed, InvalidInput, NotFound, StateError, Unsupported, VZError
from .features import Feature, load_features
from .layout import Layout
from .lock import ve_lock
from .lxc import LXC
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .run import run
from .storage import Storage, open_storage
from .templates import TemplateSpec, TemplateStore
from .veconf import VEConfig


@dataclass
class VEInfo:
    ctid: int
    status: str  # running | stopped
    hostname: str = ""
    ostemplate: str = ""
    ip_addresses: list[str] = field(default_factory=list)
    nproc: int | None = None
    onboot: bool = False
    nameservers: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # fields added by features (usage, limits, ...)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict:
        return asdict(self)


class Engine:
    """All VE operations of one engine root (``$VZ_ROOT``, default /var/lib/vz).

    Mutating operations take the VE's lock; ``lock_wait`` is how long they wait for it
    before raising Busy (the CLI fails at once, the node agent waits).
    """

    def __init__(self, root: str | os.PathLike | None = None, lock_wait: float = 0.0):
        self.layout = Layout.load(root)
        self.storage: Storage = open_storage(self.layout)
        self.templates = TemplateStore(self.layout, self.storage)
        self.lxc = LXC(self.layout.lxcpath)
        self.lock_wait = lock_wait
        self._ready = False
        self.features: list[Feature] = load_features(self)

    # --- plumbing -------------------------------------------------------------------------
    def ensure_ready(self) -> None:
        """Create the root's directories and mount its pool (idempotent)."""
        if self._ready:
            return
        if os.geteuid() != 0:
            raise StateError("vzctl must run as root")
        self.layout.make_dirs()
        self.storage.ensure()
        for sub in ("", "private", "templates", "snapshots"):
            os.chmod(self.layout.pool / sub, 0o711)
        self._ready = True

    @contextlib.contextmanager
    def _lock(self, ctid: int, operation: str):
        self.ensure_ready()
        with ve_lock(self.layout.lockdir, ctid, operation, wait=self.lock_wait):
            rescue.check_operation(self, ctid, operation)  # a VE in rescue: no start, snapshot, backup, ...
            yield

    def config(self, ctid: int) -> VEConfig:
        ctid = validate.ctid(ctid)
        path = self.layout.conf(ctid)
        if not path.exists():
            raise NotFound(f"VE {ctid} does not exist")
        return VEConfig.load(path, ctid)

    def exists(self, ctid: int) -> bool:
        return self.layout.conf(validate.ctid(ctid)).exists()

    def ctids(self) -> list[int]:
        if not self.layout.confdir.is_dir():
            return []
        out = []
        for p in self.layout.confdir.glob("*.conf"):
            if p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def _spec(self, conf: VEConfig) -> TemplateSpec:
        try:  # in rescue mode, the rescue system's template is the one that boots
            return self.templates.spec(rescue.template_of(self, conf.ctid) or conf.ostemplate)
        except NotFound:  # the template was removed since: assume a generic systemd system
            return TemplateSpec(name=conf.ostemplate, description="", init="systemd",
                                halt_signal="SIGRTMIN+3", boot_check="true", version=0)

    def _base_uid(self) -> int:
        return self.layout.idmap[0]

    # --- the VE's own host id range (idmap.py) and its id-mapped root (idmount.py) ---------
    @staticmethod
    def host_range(conf: VEConfig) -> int | None:
        """First host uid of the VE's own id range (its root on the host), None until it has one."""
        value = conf.get("IDMAP")
        return int(value) if value.isdigit() and len(value) <= 10 else None

    def host_root_uid(self, conf: VEConfig) -> int:
        """The host uid the VE's root runs as (IDMAP_BASE for a VE not started since the upgrade)."""
        host = self.host_range(conf)
        return self._base_uid() if host is None else host

    def _claim_range(self, conf: VEConfig) -> int:
        """Make sure the VE holds a host-wide unique id range and its config names it; return its base."""
        base, size = self.layout.idmap
        if idmap.overlaps_region(base, size) or size > idmap.RANGE_SIZE:
            raise StateError(f"IDMAP_BASE={base} IDMAP_SIZE={size} in vz.conf: VE files must be stored outside "
                             f"the VEs' own id ranges ({idmap.RANGE_FIRST} on) and span at most {idmap.RANGE_SIZE}")
        held = idmap.claim(self.layout.root, conf.ctid, self.host_range(conf))
        if held != self.host_range(conf):
            conf.set("IDMAP", held)
            if conf.path.exists():
                conf.save()
        return held

    def prepare_root(self, conf: VEConfig, resume: bool = False) -> Path | None:
        """Mount the VE's root id-mapped to its own range (replacing an earlier mount) before LXC starts or
        restores it: files stored as IDMAP_BASE+k show as H+k there. Return the mount point.

        ``resume``: CRIU restores the id map a VE was dumped with, so a resumed VE keeps the range its
        config names (refused if another VE holds it now), and one suspended before it had a range of
        its own resumes as it ran, on its plain root as IDMAP_BASE (None); its next start gives it one.
        """
        ctid = conf.ctid
        if resume:
            host = self.host_range(conf)
            if host is None:
                self._drop_root_mount(ctid)
                return None
            if not idmap.claim_exact(self.layout.root, ctid, host):
                raise StateError(f"VE {ctid} was suspended running as host ids {host}.., which another VE holds "
                                 f"now: it cannot be resumed; vzctl start boots it afresh in a range of its own")
        else:
            host = self._claim_range(conf)
        base, size = self.layout.idmap
        target = self.layout.ve_mount(ctid)
        self._drop_root_mount(ctid)
        self.layout.mntdir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.layout.mntdir, 0o711)
        # Only host root and the VE's own root (as whom LXC mounts the rootfs: gid H) get through,
        # and the VE's root cannot put anything there: root's directory, group H, mode 0710.
        target.parent.mkdir(mode=0o700)
        os.chown(target.parent, 0, host)
        os.chmod(target.parent, 0o710)
        target.mkdir(mode=0o755)
        try:
            if rescue.is_active(self, ctid):  # the rescue system's root, with the VE's own for its /mnt
                rescue.mount_roots(self, ctid, target, host)
            else:
                idmount.mount_idmapped(self.layout.private(ctid), target, outer=base, inner=host, size=size)
        except BaseException:
            with contextlib.suppress(VZError):
                self._drop_root_mount(ctid)
            raise
        return target

    def _drop_root_mount(self, ctid: int) -> None:
        """Unmount the VE's id-mapped root and remove its directory (never anything below a mount)."""
        top = self.layout.ve_mount(ctid).parent
        for point in idmount.mount_points(top):
            idmount.unmount(point)
        if idmount.mount_points(top):
            raise StateError(f"{top} is still mounted: unmount it by hand (umount -l) and try again")
        # Removed, not left empty: LXC must fail on a missing mount, never boot an empty directory.
        for d in (self.layout.ve_mount(ctid), rescue.disk_mount(self.layout, ctid), top):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StateError(f"cannot remove {d}, the VE's root mount point ({e.strerror}): "
                                 "move what is in it away and try again") from None

    # --- state ----------------------------------------------------------------------------
    def is_running(self, ctid: int) -> bool:
        n = self.nproc(ctid)
        return n is not None and n > 0

    def nproc(self, ctid: int) -> int | None:
        """Number of tasks in the VE (from its pids cgroup), None when it is not running."""
        rel = self.layout.cgroup_dir(ctid)
        value = cgroups.read("pids", rel, "pids.current")
        if value is None:
            procs = cgroups.read("memory", rel, "cgroup.procs")
            return len(procs.split()) if procs else None
        return int(value)

    def status(self, ctid: int) -> VEInfo:
        conf = self.config(ctid)
        return self._info(conf)

    def _info(self, conf: VEConfig) -> VEInfo:
        n = self.nproc(conf.ctid)
        extra: dict = {}
        for feature in self.features:
            extra.update(feature.info(conf, bool(n)))
        status = ("rescue" if extra.get("rescue") else "running" if n
                  else "suspended" if extra.get("suspended") else "stopped")
        return VEInfo(
            ctid=conf.ctid,
            status=status,
            hostname=conf.hostname,
            ostemplate=conf.ostemplate,
            ip_addresses=conf.get_list("IP_ADDRESS"),
            nproc=n if n else None,
            onboot=conf.onboot,
            nameservers=conf.get_list("NAMESERVER"),
            extra=extra,
        )

    def usage(self, ctid) -> dict:
        """What a VE uses now: cpu_seconds, memory_bytes, nproc, disk_bytes, ... (vzengine/RESOURCES.md)."""
        conf = self.config(ctid)
        out: dict = {}
        for feature in self.features:
            out.update(feature.usage(conf))
        return out

    def list(self) -> list[VEInfo]:
        out = []
        for ctid in self.ctids():
            with contextlib.suppress(NotFound):
                out.append(self._info(self.config(ctid)))
        return out

    # --- create ---------------------------------------------------------------------------
    def create(self, ctid, ostemplate: str | None = None, hostname: str | None = None,
               userpasswd: list[tuple[str, str]] | None = None, nameserver: list[str] | None = None,
               onboot: bool = False, progress: Progress = _quiet, **params) -> VEInfo:
        ctid = validate.ctid(ctid)
        ostemplate = validate.template_name(ostemplate or self.layout.settings["DEFAULT_TEMPLATE"])
        hostname = validate.hostname(hostname) if hostname else f"ve{ctid}"
        nameservers = [validate_nameserver(n) for n in (nameserver or [])]
        self.templates.spec(ostemplate)  # an unknown template fails here, before any change
        for user, password in userpasswd or []:
            validate.userpasswd(f"{user}:{password}")
        draft = VEConfig(ctid=ctid, path=self.layout.conf(ctid))
        feature_params = self._check_features(draft, params, creating=True)
        with self._lock(ctid, "create"):
            if self.layout.conf(ctid).exists():
                raise AlreadyExists(f"VE {ctid} already exists")
            private = self.layout.private(ctid)
            if private.exists() or os.path.lexists(private):
                raise AlreadyExists(
                    f"VE {ctid} has no config but its root {private} exists: remove it or pick another id")
            progress(5, f"preparing template {ostemplate}")
            tpl_root = self.templates.ensure(ostemplate, progress=lambda p, m: progress(5 + p * 6 // 10, m))
            with Rollback() as rb:
                progress(70, "creating the VE's root from the template")
                self.storage.clone(tpl_root, private)
                rb.add("remove VE root", lambda: self.storage.delete(private))
                progress(80, "giving the VE its own identity")
                self._set_identity(private, hostname)
                self._write_hostname(private, hostname)
                if nameservers:
                    self._write_resolv(private, nameservers)
                for user, password in userpasswd or []:
                    self._set_password_offline(private, user, password)
                conf = draft
                conf.set("OSTEMPLATE", ostemplate)
                conf.set("HOSTNAME", hostname)
                conf.set("ONBOOT", "yes" if onboot else "no")
                conf.set_list("NAMESERVER", nameservers)
                conf.set("CREATED", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                self._claim_range(conf)
                rb.add("free the VE's id range", lambda: idmap.release(self.layout.root, ctid))
                for feature, fparams in feature_params:
                    feature.apply(conf, fparams, False, rb)
                self._fail_point("create:before-config")
                conf.save()
                rb.add("remove VE config", lambda: self.layout.conf(ctid).unlink(missing_ok=True))
                self._write_lxc_config(conf)
                rb.add("remove LXC config", lambda: self.lxc.remove_config(ctid))
                self._fail_point("create:after-config")
                rb.commit()
            progress(100, f"VE {ctid} created")
            return self._info(conf)

    def _check_features(self, conf: VEConfig, params: dict, creating: bool) -> list[tuple[Feature, dict]]:
        """Split ``params`` among the features and let each validate its own; refuse the rest."""
        out, left = [], dict(params)
        for feature in self.features:
            mine = {k: left.pop(k) for k in feature.params if k in left}
            if mine or creating:
                out.append((feature, feature.check(conf, mine, creating)))
        if left:
            raise InvalidInput(f"unknown VE parameter {sorted(left)[0]!r}")
        return out

    @staticmethod
    def _fail_point(name: str) -> None:
        """Raise where $VZ_FAIL_AT names this point: lets tests prove that rollback works."""
        if os.environ.get("VZ_FAIL_AT") == name:
            raise CommandFailed(f"injected failure at {name}")

    def new_identity(self, ctid, hostname: str | None = None) -> None:
        """Give a stopped VE a machine-id and SSH host keys of its own (as create and clone do), e.g. a copy
        restored from another VE's backup."""
        conf = self.config(ctid)
        with self._lock(conf.ctid, "identity"):
            if self.is_running(conf.ctid):
                raise StateError(f"VE {conf.ctid} is running: stop it to give it a new identity")
            self._set_identity(self.layout.private(conf.ctid), hostname or conf.hostname or f"ve{conf.ctid}")

    def _set_identity(self, private: Path, hostname: str) -> None:
        """Give a new VE a machine-id and SSH host keys of its own."""
        base = self._base_uid()
        rootfs.write_file(private, "etc/machine-id", secrets.token_hex(16) + "\n", mode=0o444,
                          uid=base, gid=base)
        if rootfs.file_owner(private, "var/lib/dbus") is not None:
            rootfs.remove_file(private, "var/lib/dbus/machine-id")
        if rootfs.file_owner(private, "etc/ssh") is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            # No RSA key: it costs ~0.5 s of CPU per VE and every current client speaks ed25519.
            for kind in ("ed25519", "ecdsa"):
                key = Path(tmp, f"ssh_host_{kind}_key")
                run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{hostname}", "-f", str(key)],
                    what="generate SSH host keys")
                rootfs.write_file(private, f"etc/ssh/{key.name}", key.read_bytes(), mode=0o600,
                                  uid=base, gid=base)
                rootfs.write_file(private, f"etc/ssh/{key.name}.pub", Path(f"{key}.pub").read_bytes(),
                                  mode=0o644, uid=base, gid=base)

    def _write_hostname(self, private: Path, hostname: str) -> None:
        base = self._base_uid()
        # Read first: a refused read (a FIFO, a link out of the VE) must leave /etc/hostname as it was.
        hosts = (rootfs.read_file(private, "etc/hosts") or b"").decode(errors="replace").splitlines()
        rootfs.write_file(private, "etc/hostname", hostname + "\n", uid=base, gid=base)
        short = hostname.split(".")[0]
        entry = f"127.0.1.1\t{hostname}" + (f" {short}" if short != hostname else "")
        hosts = [ln for ln in hosts if not ln.startswith("127.0.1.1")]
        hosts.insert(1 if hosts else 0, entry)
        rootfs.write_file(private, "etc/hosts", "\n".join(hosts) + "\n", uid=base, gid=base)

    def _write_resolv(self, private: Path, nameservers: list[str], search: str = "") -> None:
        base = self._base_uid()
        text = "# written by vzpanel (vzctl set --nameserver)\n"
        if search:
            text += f"search {search}\n"
        text += "".join(f"nameserver {n}\n" for n in nameservers)
        rootfs.write_file(private, "etc/resolv.conf", text, uid=base, gid=base)

    def _set_password_offline(self, private: Path, user: str, password: str) -> None:
        """Set ``user``'s password in the VE's /etc/shadow from the host (no symlink followed)."""
        validate.username(user)
        shadow = rootfs.read_file(private, "etc/shadow")
        if shadow is None:
            raise NotFound("the VE has no /etc/shadow")
        hashed = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                     what="hash the password").stdout.strip()
        lines = shadow.decode(errors="replace").splitlines()
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == user and len(fields) >= 2:
                fields[1] = hashed
                if len(fields) > 2:
                    fields[2] = str(int(time.time() // 86400))
                lines[i] = ":".join(fields)
                break
        else:
            raise NotFound(f"user {user} does not exist in the VE; start the VE to have it created")
        owner = rootfs.file_owner(private, "etc/shadow")
        uid, gid, mode = owner if owner else (self._base_uid(), self._base_uid(), 0o640)
        rootfs.write_file(private, "etc/shadow", "\n".join(lines) + "\n", mode=mode, uid=uid, gid=gid)

    # --- LXC config -----------------------------------------------------------------------
    def _write_lxc_config(self, conf: VEConfig) -> None:
        self.lxc.write_config(conf.ctid, self.lxc_config(conf))

    def lxc_config(self, conf: VEConfig) -> list[str]:
        """The LXC config of a VE, derived from its vzpanel config at every start."""
        spec = self._spec(conf)
        base, size = self.layout.idmap
        ctid = conf.ctid
        host = self.host_range(conf)  # None: a VE from before per-VE ranges, running as it was started
        root = self.layout.private(ctid) if host is None else self.layout.ve_mount(ctid)
        host = base if host is None else host
        lines = [
            f"# generated by vzengine from {self.layout.conf(ctid)}: edit that file (vzctl set), not this one",
            "lxc.include = /usr/share/lxc/config/common.conf",
            "lxc.include = /usr/share/lxc/config/userns.conf",
            "lxc.arch = linux64",
            f"lxc.uts.name = {conf.hostname or f've{ctid}'}",
            f"lxc.rootfs.path = dir:{root}",
            f"lxc.idmap = u 0 {host} {size}",
            f"lxc.idmap = g 0 {host} {size}",
            f"lxc.cgroup.dir.container = {self.layout.cgroup_dir(ctid)}",
            f"lxc.cgroup.dir.monitor = {self.layout.cgroup_parent()}/{ctid}.monitor",
            f"lxc.signal.halt = {spec.halt_signal}",
            "lxc.net.0.type = empty",
            # No ttys: shells are served through lxc-attach by the node agent.
            "lxc.tty.max = 0",
        ]
        if spec.checkpointable:
            # No host-side console either: CRIU cannot dump a VE whose /dev/console is a host pty.
            lines.append("lxc.console.path = none")
        else:
            # systemd cannot be checkpointed anyway: give it a console whose output (the boot and
            # shutdown messages) LXC writes to a log the web console shows while the VE boots, capped
            # at 128 KiB. No getty on it: nobody logs in there, and a terminal in the VE would count
            # as someone's session. Each start begins a new log (_start keeps the last run's as .1).
            lines += [
                f"lxc.console.logfile = {self.layout.console_log(ctid)}",
                "lxc.console.size = 128KB",
                "lxc.environment = SYSTEMD_GETTY_AUTO=0",
            ]
        lines += [
            f"lxc.log.file = {self.layout.logdir / f'{ctid}.lxc.log'}",
            "lxc.log.level = WARN",
        ]
        for feature in self.features:
            lines += feature.lxc_config(conf)
        lines += self.storage.lxc_lines()  # seccomp profile: no subvolumes or reflinks past the disk quota
        return lines

    # --- start / stop ---------------------------------------------------------------------
    def start(self, ctid, wait_boot: bool = False, progress: Progress = _quiet,
              boot_timeout: float = 120.0) -> VEInfo:
        conf = self.config(ctid)
        with self._lock(conf.ctid, "start"):
            self._start(conf, progress)
        if wait_boot:
            progress(60, "waiting for the VE to finish booting")
            self.wait_booted(conf.ctid, timeout=boot_timeout)
        progress(100, f"VE {conf.ctid} is running")
        return self._info(conf)

    def _start(self, conf: VEConfig, progress: Progress) -> None:
        ctid = conf.ctid
        if self.is_running(ctid):
            raise StateError(f"VE {ctid} is already running")
        if not self.layout.private(ctid).is_dir():
            raise NotFound(f"VE {ctid}: its root {self.layout.private(ctid)} is missing")
        cgroups.remove_tree(self.layout.cgroup_dir(ctid))  # left over by a crashed run
        progress(10, f"starting VE {ctid}")
        for feature in self.features:
            feature.before_start(conf)
        console_log = self.layout.console_log(ctid)
        with contextlib.suppress(FileNotFoundError):  # a new run, a new console log; the last run's is kept
            os.replace(console_log, console_log.with_name(console_log.name + ".1"))
        self.prepare_root(conf)
        self._write_lxc_config(conf)
        log = self.layout.logdir / f"{ctid}.lxc.log"
        try:
            self.lxc.start(ctid, log)
        except CommandFailed as e:
            self._reap_failed_start(ctid)
            with contextlib.suppress(VZError):
                self._drop_root_mount(ctid)
            raise CommandFailed(f"VE {ctid} failed to start: {self._log_tail(log) or e.message}") from e
        try:
            for feature in self.features:
                feature.after_start(conf)
        except BaseException:
            with contextlib.suppress(VZError):
                self.lxc.stop(ctid, timeout=0, kill=True)
            self._after_stop(conf)
            raise

    def _reap_failed_start(self, ctid: int) -> None:
        """After a failed lxc-start, wait for LXC's aborting processes to leave, then clean up."""
        deadline = time.monotonic() + 10
        while self.is_running(ctid) and time.monotonic() < deadline:
            with contextlib.suppress(VZError):
                self.lxc.stop(ctid, timeout=0, kill=True)
            time.sleep(0.05)
        cgroups.remove_tree(self.layout.cgroup_dir(ctid))

    def _log_tail(self, log: Path) -> str:
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        except OSError:
            return ""
        return lines[-1].split(" - ", 1)[-1] if lines else ""

    def wait_booted(self, ctid: int, timeout: float = 120.0) -> float:
        """Poll the template's boot check inside the VE; return seconds waited."""
        conf = self.config(ctid)
        check = self._spec(conf).boot_check
        t0 = time.monotonic()
        while True:
            if not self.is_running(ctid):
                raise StateError(f"VE {ctid} stopped while booting; see {self.layout.logdir}/{ctid}.lxc.log")
            proc = self.lxc.attach(ctid, ["/bin/sh", "-c", check], timeout=30)
            if proc.returncode == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise StateError(f"VE {ctid} did not finish booting within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, ctid, timeout: int | None = None, fast: bool = False, progress: Progress = _quiet) -> VEInfo:
        conf = self.config(ctid)
        with self._lock(conf.ctid, "stop"):
            if not self.is_running(conf.ctid):
                raise StateError(f"VE {conf.ctid} is not running")
            self._stop(conf, timeout, fast, progress)
        progress(100, f"VE {conf.ctid} is stopped")
        return self._info(conf)

    def _stop(self, conf: VEConfig, timeout: int | None, fast: bool, progress: Progress) -> None:
        timeout = int(self.layout.settings["STOP_TIMEOUT"]) if timeout is None else timeout
        progress(20, "killing the VE's processes" if fast else f"shutting down (up to {timeout} s)")
        if not fast:
            self._shut_down(conf.ctid, timeout)
        if self.lxc.state(conf.ctid) != "STOPPED":
            self.lxc.stop(conf.ctid, timeout=0, kill=True)
        self._after_stop(conf)

    def _shut_down(self, ctid: int, timeout: int) -> None:
        """Ask the VE's init to shut down and wait until it has, or until only init is left, or the timeout.

        Once every other process has exited, init has nothing left to stop: BusyBox's init would still
        sleep two seconds (a tiny VE took 2.5 s to stop), others sync and power off. The caller kills it
        then, which ends the VE at once. A process that ignores the halt keeps the VE up to the timeout.
        """
        self.lxc.halt(ctid)
        deadline = time.monotonic() + timeout
        rel = self.layout.cgroup_dir(ctid)
        while time.monotonic() < deadline:
            tasks = cgroups.read("pids", rel, "pids.current")
            if tasks is None or not tasks.strip().isdigit():  # no task count: wait for LXC to see it stop
                if self.lxc.state(ctid) != "STOPPED":
                    self.lxc.stop(ctid, timeout=max(1, int(deadline - time.monotonic())))
                return
            if int(tasks) <= 1:
                return
            time.sleep(0.02)

    def _after_stop(self, conf: VEConfig) -> None:
        for feature in self.features:
            with contextlib.suppress(VZError):  # keep releasing the rest; a start re-creates them
                feature.after_stop(conf)
        cgroups.remove_tree(self.layout.cgroup_dir(conf.ctid))
        with contextlib.suppress(VZError):  # a start replaces a mount left behind
            self._drop_root_mount(conf.ctid)

    def restart(self, ctid, progress: Progress = _quiet, wait_boot: bool = False) -> VEInfo:
        conf = self.config(ctid)
        with self._lock(conf.ctid, "restart"):
            if self.is_running(conf.ctid):
                self._stop(conf, None, False, lambda p, m: progress(p // 2, m))
            self._start(conf, lambda p, m: progress(50 + p // 2, m))
        if wait_boot:
            self.wait_booted(conf.ctid)
        progress(100, f"VE {conf.ctid} restarted")
        return self._info(conf)

    def start_onboot(self, progress: Progress = _quiet) -> list[tuple[int, str]]:
        """Start every VE whose ONBOOT is yes; return (ctid, error) for those that failed."""
        failed = []
        for ctid in self.ctids():
            conf = self.config(ctid)
            if not conf.onboot or self.is_running(ctid):
                continue
            try:
                if rescue.is_active(self, ctid):  # in rescue when the host went down: its rescue system comes back
                    rescue.enter(self, ctid)
                else:
                    self.start(ctid)
                progress(0, f"VE {ctid} started")
            except VZError as e:
                failed.append((ctid, e.message))
        return failed

    # --- destroy --------------------------------------------------------------------------
    def destroy(self, ctid, progress: Progress = _quiet) -> None:
        conf = self.config(ctid)
        ctid = conf.ctid
        with self._lock(ctid, "destroy"):
            if self.is_running(ctid):
                progress(10, "stopping the VE")
                self._stop(conf, 10, False, progress)
            progress(40, "removing the VE's files")
            self._drop_root_mount(ctid)  # (left by a poweroff inside the VE)
            self._destroy_storage(ctid)
            self.lxc.remove_config(ctid)
            for log in self.layout.logdir.glob(f"{ctid}.*"):
                log.unlink(missing_ok=True)
            cgroups.remove_tree(self.layout.cgroup_dir(ctid))
            for feature in self.features:
                feature.destroy(conf)
            self.layout.conf(ctid).unlink()
            idmap.release(self.layout.root, ctid)
        (self.layout.lockdir / f"{ctid}.lock").unlink(missing_ok=True)
        progress(100, f"VE {ctid} destroyed")

    def _destroy_storage(self, ctid: int) -> None:
        snapdir = self.layout.snapshot_dir(ctid)
        if snapdir.is_dir():
            for snap in snapdir.iterdir():
                if snap.is_dir():
                    self.storage.set_readonly(snap, False)
                    self.storage.delete(snap)
            shutil.rmtree(snapdir, ignore_errors=True)
        self.storage.delete(self.layout.private(ctid))

    # --- set ------------------------------------------------------------------------------
    def set(self, ctid, hostname: str | None = None, userpasswd: list[tuple[str, str]] | None = None,
            nameserver: list[str] | None = None, searchdomain: str | None = None,
            onboot: bool | None = None, save: bool = True, progress: Progress = _quiet, **params) -> VEInfo:
        conf = self.config(ctid)
        ctid = conf.ctid
        hostname = validate.hostname(hostname) if hostname is not None else None
        nameservers = [validate_nameserver(n) for n in nameserver] if nameserver is not None else None
        if searchdomain is not None and searchdomain:
            validate.hostname(searchdomain)
        for user, password in userpasswd or []:
            validate.userpasswd(f"{user}:{password}")
        feature_params = self._check_features(conf, params, creating=False)
        with self._lock(ctid, "set"), Rollback() as rb:
            running = self.is_running(ctid)
            private = self.layout.private(ctid)
            if not running and not save and (feature_params or any(
                    v is not None for v in (hostname, nameservers, onboot))):
                raise InvalidInput(f"VE {ctid} is not running, so only --save can change it")
            if hostname is not None:
                self._write_hostname(private, hostname)
                if running:
                    self.lxc.attach(ctid, ["hostname", hostname], check=True)
                conf.set("HOSTNAME", hostname)
            if nameservers is not None or searchdomain is not None:
                ns = nameservers if nameservers is not None else conf.get_list("NAMESERVER")
                sd = searchdomain if searchdomain is not None else conf.get("SEARCHDOMAIN")
                self._write_resolv(private, ns, sd)
                conf.set_list("NAMESERVER", ns)
                conf.set("SEARCHDOMAIN", sd)
            if onboot is not None:
                conf.set("ONBOOT", "yes" if onboot else "no")
            for feature, fparams in feature_params:
                feature.apply(conf, fparams, running, rb)
            for user, password in userpasswd or []:
                self._set_password(ctid, running, user, password)
            rb.commit()
            if save:
                conf.save()
                self._write_lxc_config(conf)
        progress(100, f"VE {ctid} updated")
        return self._info(conf)

    def _set_password(self, ctid: int, running: bool, user: str, password: str) -> None:
        private = self.layout.private(ctid)
        try:
            self._set_password_offline(private, user, password)
        except NotFound:
            if not running:
                raise
            # A new user: let the VE's own tools create it, as OpenVZ's vzctl does.
            made = self.lxc.attach(ctid, ["/bin/sh", "-c", ADD_USER_SCRIPT, "adduser", user])
            if made.returncode == 127:
                raise Unsupported(f"VE {ctid} has neither useradd nor adduser to create user {user}") from None
            if made.returncode != 0:
                raise CommandFailed(
                    f"creating user {user} in VE {ctid} failed: {made.stderr.strip()[-200:]}") from None
            self.lxc.attach(ctid, ["chpasswd"], input=f"{user}:{password}\n", check=True)

    # --- exec / enter ---------------------------------------------------------------------
    def exec(self, ctid, command: list[str] | str, input: str | bytes | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a shell command line inside a running VE as its root; return the finished process."""
        return subprocess.run(self.exec_argv(ctid, command), input=input, capture_output=True,
                              text=not isinstance(input, bytes), timeout=timeout, check=False)

    def exec_argv(self, ctid, command: list[str] | str) -> list[str]:
        """The command line that runs ``command`` (joined, through /bin/sh -c, as vzctl exec does)."""
        conf = self.config(ctid)
        if not self.is_running(conf.ctid):
            raise StateError(f"VE {conf.ctid} is not running")
        line = command if isinstance(command, str) else " ".join(command)
        return self.lxc.attach_argv(conf.ctid, ["/bin/sh", "-c", line])

    def console_argv(self, ctid) -> list[str]:
        """The command line that attaches the terminal to a running VE's console (Ctrl-a q detaches)."""
        conf = self.config(ctid)
        if not self._spec(conf).checkpointable and self.is_running(conf.ctid):
            return ["lxc-console", *self.lxc._args(conf.ctid), "-t", "0"]
        if not self._spec(conf).checkpointable:
            raise StateError(f"VE {conf.ctid} is not running; its last console output is in "
                             f"{self.layout.console_log(conf.ctid)} (vzctl console {conf.ctid} --log)")
        raise Unsupported(f"VE {conf.ctid} has no console device: VEs whose template can be checkpointed "
                          f"({conf.get('OSTEMPLATE') or 'this one'}) have none, which CRIU needs; use vzctl enter")

    def enter_argv(self, ctid, term: str | None = None) -> list[str]:
        """The command line that opens a root login shell inside a running VE."""
        conf = self.config(ctid)
        if not self.is_running(conf.ctid):
            raise StateError(f"VE {conf.ctid} is not running")
        return self.lxc.attach_argv(conf.ctid, None, env={"TERM": term or "xterm-256color"})

    # --- the root as a whole --------------------------------------------------------------
    def purge(self) -> None:
        """Stop and remove every VE of this root, unmount its pool and remove the root itself."""
        for ctid in self.ctids():
            if self.is_running(ctid):
                with contextlib.suppress(VZError):
                    self.lxc.stop(ctid, timeout=0, kill=True)
            for feature in self.features:
                with contextlib.suppress(VZError):
                    feature.destroy(self.config(ctid))
        for feature in self.features:
            with contextlib.suppress(VZError):
                feature.purge()
        cgroups.remove_tree(self.layout.cgroup_parent())
        for point in idmount.mount_points(self.layout.mntdir):  # before any VE root is removed
            idmount.unmount(point)
        if idmount.mount_points(self.layout.mntdir):
            raise StateError(f"VE roots under {self.layout.mntdir} are still mounted: unmount them and purge again")
        shutil.rmtree(self.layout.mntdir, ignore_errors=True)
        idmap.release_root(self.layout.root)
        if self.layout.pool.is_dir():
            pool = self.layout.pool
            volumes = [*pool.glob("private/*"), *pool.glob("snapshots/*/*"), *pool.glob("templates/*")]
            for vol in volumes:
                if vol.is_dir() and not vol.is_symlink():
                    with contextlib.suppress(VZError):
                        self.storage.set_readonly(vol, False)
                        self.storage.delete(vol)
        self.storage.teardown()
        if self.layout.storage != "btrfs":
            shutil.rmtree(self.layout.root, ignore_errors=True)

    # --- snapshots, backups, checkpoints (vzengine/snapshots.py) ---
    def snapshot(self, ctid, name: str | None = None, description: str = "", progress: Progress = _quiet):
        from . import snapshots
        return snapshots.snapshot(self, ctid, name, description, progress=progress)

    def snapshot_list(self, ctid, sizes: bool = True):
        from . import snapshots
        return snapshots.snapshot_list(self, ctid, sizes=sizes)

    def snapshot_switch(self, ctid, name: str, progress: Progress = _quiet) -> VEInfo:
        from . import snapshots
        return snapshots.snapshot_switch(self, ctid, name, progress=progress)

    def snapshot_delete(self, ctid, name: str, progress: Progress = _quiet) -> None:
        from . import snapshots
        snapshots.snapshot_delete(self, ctid, name, progress=progress)

    def clone(self, src, dst, linked: bool = False, hostname: str | None = None, snapshot: str | None = None,
              progress: Progress = _quiet, **params) -> VEInfo:
        from . import snapshots
        return snapshots.clone(self, src, dst, linked=linked, hostname=hostname, snapshot=snapshot,
                               progress=progress, **params)

    def backup(self, ctid, directory=None, progress: Progress = _quiet):
        from . import backup
        return backup.backup(self, ctid, directory, progress=progress)

    def backup_verify(self, path, progress: Progress = _quiet) -> dict:
        from . import backup
        return backup.verify(path, progress=progress)

    def restore(self, path, ctid=None, force: bool = False, progress: Progress = _quiet) -> VEInfo:
        from . import backup
        return backup.restore(self, path, ctid, force=force, progress=progress)

    def restore_named(self, name, ctid=None, directory=None, force: bool = False,
                      progress: Progress = _quiet) -> VEInfo:
        """Restore backup file ``name`` (no path) from the backup directory, never following a link."""
        from . import backup
        return backup.restore_named(self, name, ctid, directory, force=force, progress=progress)

    def backup_verify_named(self, name, directory=None, progress: Progress = _quiet) -> dict:
        from . import backup
        return backup.verify_named(self, name, directory, progress=progress)

    def backup_delete_named(self, name, directory=None) -> None:
        from . import backup
        backup.delete_named(self, name, directory)

    def pool_info(self) -> dict:
        """The storage pool's size, use and whether its disk quotas hold (vzctl pool info)."""
        self.ensure_ready()
        return self.storage.pool_info()

    def reinstall(self, ctid, ostemplate: str | None = None, keep=(), snapshot: bool = True,
                  progress: Progress = _quiet) -> VEInfo:
        from . import snapshots
        return snapshots.reinstall(self, ctid, ostemplate, keep=keep, snapshot=snapshot, progress=progress)

    def suspend(self, ctid, progress: Progress = _quiet) -> dict:
        from . import checkpoint
        return checkpoint.suspend(self, ctid, progress=progress)

    def resume(self, ctid, progress: Progress = _quiet) -> dict:
        from . import checkpoint
        return checkpoint.resume(self, ctid, progress=progress)

    def is_suspended(self, ctid) -> bool:
        from . import checkpoint
        return checkpoint.is_suspended(self, validate.ctid(ctid))

ADD_USER_SCRIPT = """
if command -v useradd >/dev/null; then exec useradd -m -s /bin/bash "$1"
elif command -v adduser >/dev/null; then exec adduser -D "$1"
else exit 127; fi
"""


def validate_nameserver(value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise InvalidInput(f"invalid name server address {value!r}") from None
