"""The VE engine: create, start, stop, destroy and configure VEs under one state root."""

from __future__ import annotations

import builtins
import contextlib
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cgroups, guest, idmap, idmount, lxcconf, rescue, validate, veroot
from .errors import AlreadyExists, CommandFailed, InvalidInput, NotFound, StateError, Unsupported, VZError
from .features import Feature, load_features
from .layout import Layout
from .lock import ve_lock
from .lxc import LXC
from .operations import Operations
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
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


class Engine(Operations):
    """All VE operations of one engine root (``$VZ_ROOT``, default /var/lib/vz).

    Mutating operations take the VE's lock; ``lock_wait`` is how long they wait for it
    before raising Busy (the CLI fails at once, the node agent waits). The lifecycle is here; snapshots,
    clones, backups, reinstalls and checkpoints live in their own modules, reached through the
    methods of ``Operations`` (operations.py).
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

    # --- the VE's own host id range and its id-mapped root (veroot.py) ---------------------
    host_range = staticmethod(veroot.host_range)

    def host_root_uid(self, conf: VEConfig) -> int:
        """The host uid the VE's root runs as (IDMAP_BASE for a VE not started since the upgrade)."""
        host = veroot.host_range(conf)
        return self._base_uid() if host is None else host

    def _claim_range(self, conf: VEConfig) -> int:
        return veroot.claim_range(self, conf)

    def prepare_root(self, conf: VEConfig, resume: bool = False) -> Path | None:
        """Mount the VE's root id-mapped to its own range before LXC starts or restores it (veroot.py)."""
        return veroot.prepare_root(self, conf, resume)

    def _drop_root_mount(self, ctid: int) -> None:
        veroot.drop_root_mount(self, ctid)

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

    def list(self) -> list[VEInfo]:  # below, "list" is this method: types say builtins.list
        out = []
        for ctid in self.ctids():
            with contextlib.suppress(NotFound):
                out.append(self._info(self.config(ctid)))
        return out

    # --- create ---------------------------------------------------------------------------
    def create(self, ctid, ostemplate: str | None = None, hostname: str | None = None,
               userpasswd: builtins.list[tuple[str, str]] | None = None, nameserver: builtins.list[str] | None = None,
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
                uid = self._base_uid()
                guest.set_identity(private, hostname, uid)
                guest.write_hostname(private, hostname, uid)
                if nameservers:
                    guest.write_resolv(private, nameservers, "", uid)
                for user, password in userpasswd or []:
                    guest.set_password(private, user, password, uid)
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

    def _check_features(self, conf: VEConfig, params: dict, creating: bool) -> builtins.list[tuple[Feature, dict]]:
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
            guest.set_identity(self.layout.private(conf.ctid), hostname or conf.hostname or f"ve{conf.ctid}",
                               self._base_uid())

    # --- LXC config (lxcconf.py) ------------------------------------------------------------
    def _write_lxc_config(self, conf: VEConfig) -> None:
        self.lxc.write_config(conf.ctid, self.lxc_config(conf))

    def lxc_config(self, conf: VEConfig) -> builtins.list[str]:
        """The LXC config of a VE, derived from its vzpanel config at every start."""
        return lxcconf.lxc_config(self, conf)

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

    def start_onboot(self, progress: Progress = _quiet) -> builtins.list[tuple[int, str]]:
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
    def set(self, ctid, hostname: str | None = None, userpasswd: builtins.list[tuple[str, str]] | None = None,
            nameserver: builtins.list[str] | None = None, searchdomain: str | None = None,
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
                guest.write_hostname(private, hostname, self._base_uid())
                if running:
                    self.lxc.attach(ctid, ["hostname", hostname], check=True)
                conf.set("HOSTNAME", hostname)
            if nameservers is not None or searchdomain is not None:
                ns = nameservers if nameservers is not None else conf.get_list("NAMESERVER")
                sd = searchdomain if searchdomain is not None else conf.get("SEARCHDOMAIN")
                guest.write_resolv(private, ns, sd, self._base_uid())
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
            guest.set_password(private, user, password, self._base_uid())
        except NotFound:
            if not running:
                raise
            # A new user: let the VE's own tools create it, as OpenVZ's vzctl does.
            made = self.lxc.attach(ctid, ["/bin/sh", "-c", guest.ADD_USER_SCRIPT, "adduser", user])
            if made.returncode == 127:
                raise Unsupported(f"VE {ctid} has neither useradd nor adduser to create user {user}") from None
            if made.returncode != 0:
                raise CommandFailed(
                    f"creating user {user} in VE {ctid} failed: {made.stderr.strip()[-200:]}") from None
            self.lxc.attach(ctid, ["chpasswd"], input=f"{user}:{password}\n", check=True)

    # --- exec / enter ---------------------------------------------------------------------
    def exec(self, ctid, command: builtins.list[str] | str, input: str | bytes | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a shell command line inside a running VE as its root; return the finished process."""
        return subprocess.run(self.exec_argv(ctid, command), input=input, capture_output=True,
                              text=not isinstance(input, bytes), timeout=timeout, check=False)

    def exec_argv(self, ctid, command: builtins.list[str] | str) -> builtins.list[str]:
        """The command line that runs ``command`` (joined, through /bin/sh -c, as vzctl exec does)."""
        conf = self.config(ctid)
        if not self.is_running(conf.ctid):
            raise StateError(f"VE {conf.ctid} is not running")
        line = command if isinstance(command, str) else " ".join(command)
        return self.lxc.attach_argv(conf.ctid, ["/bin/sh", "-c", line])

    def console_argv(self, ctid) -> builtins.list[str]:
        """The command line that attaches the terminal to a running VE's console (Ctrl-a q detaches)."""
        conf = self.config(ctid)
        if not self._spec(conf).checkpointable and self.is_running(conf.ctid):
            return ["lxc-console", *self.lxc._args(conf.ctid), "-t", "0"]
        if not self._spec(conf).checkpointable:
            raise StateError(f"VE {conf.ctid} is not running; its last console output is in "
                             f"{self.layout.console_log(conf.ctid)} (vzctl console {conf.ctid} --log)")
        raise Unsupported(f"VE {conf.ctid} has no console device: VEs whose template can be checkpointed "
                          f"({conf.get('OSTEMPLATE') or 'this one'}) have none, which CRIU needs; use vzctl enter")

    def enter_argv(self, ctid, term: str | None = None) -> builtins.list[str]:
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

    # --- the storage pool -----------------------------------------------------------------
    def pool_info(self) -> dict:
        """The storage pool's size, use and whether its disk quotas hold (vzctl pool info)."""
        self.ensure_ready()
        return self.storage.pool_info()


def validate_nameserver(value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise InvalidInput(f"invalid name server address {value!r}") from None
