"""Resource limits and accounting (issue 4): CPU, memory, processes, disk, I/O.

Two tables drive everything:

``PARAMS``  (limits.py) our OpenVZ-like parameters: the ``vzctl`` option, the Engine keyword, the
            key in the VE's config, and how a value is parsed and checked.
``KNOBS``   (knobs.py) each cgroup file a limit lives in, on cgroup v1 and on cgroup v2, the config
            keys it derives from and how its value is computed from them.

At start the knobs become ``lxc.cgroup.*`` (v1) or ``lxc.cgroup2.*`` (v2) lines of the VE's LXC
config, and LXC writes them into the VE's cgroup before init runs. On a running VE the same
values are written into the VE's cgroup files directly. Disk space is a btrfs qgroup limit on
the VE's subvolume, kept whether the VE runs or not. See RESOURCES.md for what each limit does
and which OpenVZ limits a stock kernel cannot enforce.

Every VE has limits: where its config sets none of its own RAM, SWAP, NUMPROC, CPUUNITS or
DISKSPACE, the node's default from vz.conf (``DEFAULT_RAM`` and so on, layout.py) applies. A
VE given ``unlimited`` on purpose keeps the word in its config, so the default does not return.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from . import accounting, cgroups, lxcfs, validate
from .beancounters import beancounters
from .errors import CommandFailed, InvalidInput, Unsupported
from .features import Feature
from .knobs import KNOBS, Context, Knob, knob_version
from .limits import (
    KEYS,
    NODE_DEFAULTS,
    PARAM_BY_KWARG,
    PARAMS,
    UNLIMITED,
    Limits,
    human_limit,
    limits_of,
    node_defaults,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .rollback import Rollback
    from .veconf import VEConfig

log = logging.getLogger(__name__)

_CREATING = "_creating"  # in what check() returns at create: apply() then sets the default disk quota


def pool_block_devices(engine: Engine) -> list[str]:
    """major:minor of the block devices the pool's file system lives on (throttling targets)."""
    return engine.storage.block_devices()


# --- the feature ------------------------------------------------------------------------------

class ResourcesFeature(Feature):
    name = "resources"
    params = tuple(p.kwarg for p in PARAMS)

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self._reader: accounting.UsageReader | None = None

    def defaults(self) -> Limits:
        """The node's default limits (vz.conf), read anew each time: an edit applies at the next start."""
        return node_defaults(self.engine.layout, can_quota=self.engine.storage.can_quota)

    def limits(self, conf: VEConfig) -> Limits:
        """The limits in effect for the VE: its own where it has them, the node's defaults elsewhere."""
        return limits_of(conf, self.defaults())

    @property
    def reader(self) -> accounting.UsageReader:
        if self._reader is None:
            self._reader = accounting.UsageReader(self.engine.layout, quota=self.engine.storage.can_quota)
        return self._reader

    # --- validation -----------------------------------------------------------------------
    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        if "ioweight" in params and "ioprio" in params:
            raise InvalidInput("give either --ioweight or --ioprio, not both")
        out: dict = {}
        for kwarg, value in params.items():
            if value is None:
                continue
            p = PARAM_BY_KWARG[kwarg]
            parsed = p.parse(value)
            if p.key:
                out[p.key] = parsed
        if creating:
            out[_CREATING] = True
        if not out.keys() - {_CREATING}:
            return out
        new = {**self.limits(conf), **out}
        if out.get("SWAP") is not None and not new.get("RAM"):
            raise InvalidInput("--swap needs a --ram limit: swap is what a VE may use on top of its RAM")
        if "DISKSPACE" in out and not self.engine.storage.can_quota:
            raise Unsupported(f"disk quota is not available with STORAGE={self.engine.layout.storage}: "
                              "use a btrfs pool for --diskspace")
        if out.get("IOLIMIT") or out.get("IOPSLIMIT"):
            self.engine.ensure_ready()  # the pool must be mounted to find its devices
            if cgroups.version("blkio") is None and cgroups.version("io") is None:
                raise Unsupported("this kernel has no block I/O cgroup controller for --iolimit/--iopslimit")
            if not pool_block_devices(self.engine):
                raise Unsupported(f"the pool {self.engine.layout.pool} is not on a block device, so its I/O "
                                  "cannot be throttled")
        if not creating:
            self._check_usage(conf, out, self.engine.is_running(conf.ctid))
        return out

    def _check_usage(self, conf: VEConfig, new: dict, running: bool) -> None:
        """Refuse limits below what the VE already uses, where lowering cannot work."""
        ctid = conf.ctid
        if new.get("NUMPROC") and running:
            n = self.engine.nproc(ctid) or 0
            if new["NUMPROC"] < n:
                raise InvalidInput(f"VE {ctid} runs {n} processes and threads; --numproc {new['NUMPROC']} "
                                   "is below that: stop some first")
        if new.get("RAM") and running and cgroups.version("memory") == 2:
            # v2 does not refuse a memory.max below usage: it OOM-kills. Refuse it here instead.
            stat = cgroups.flat_keyed(cgroups.read("memory", self.engine.layout.cgroup_dir(ctid), "memory.stat"))
            pinned = stat.get("anon", 0) + stat.get("shmem", 0) + stat.get("kernel", 0)
            swap = (new.get("SWAP") or 0) if cgroups.swap_accounting() else 0
            if new["RAM"] + swap < pinned:
                raise InvalidInput(f"VE {ctid} holds {validate.human_size(pinned)} of memory that cannot be "
                                   f"reclaimed below {validate.human_size(new['RAM'])}: stop some of its "
                                   "processes or choose a higher limit")
        if new.get("DISKSPACE") and self.engine.storage.can_quota and self.engine.layout.private(ctid).is_dir():
            used = self.disk_used(ctid, fresh=True)
            if used is not None and new["DISKSPACE"] < used:
                raise InvalidInput(f"VE {ctid} already uses {validate.human_size(used)} of disk; "
                                   f"--diskspace {validate.human_size(new['DISKSPACE'])} is below that: "
                                   "free some space first")

    # --- applying -------------------------------------------------------------------------
    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        params = dict(params)
        creating = params.pop(_CREATING, False)
        old = self.limits(conf)
        new = {**old, **params}
        if params:
            self._check_usage(conf, params, running)  # again, under the VE's lock
        if "DISKSPACE" in params:
            self._set_quota(conf.ctid, new["DISKSPACE"], rb)
        elif creating and new["DISKSPACE"] and self.engine.storage.can_quota:
            if not self.engine.storage.quota_on():  # the node's default, on a pool without quota: no limit to set
                log.warning("quota is off on the pool %s: VE %s gets no disk limit", self.engine.layout.pool,
                            conf.ctid)
            else:
                self._set_quota(conf.ctid, new["DISKSPACE"], rb)
        if running and params:
            self._write_live(conf.ctid, old, new, set(params), rb)
        for key, value in params.items():
            # "unlimited" is kept where a node default exists, or the default would apply again.
            conf.set(key, UNLIMITED if value is None and key in NODE_DEFAULTS else value)

    def _write_live(self, ctid: int, old: Limits, new: Limits, changed: set[str], rb: Rollback) -> None:
        rel = self.engine.layout.cgroup_dir(ctid)
        ctx = Context(self.engine)
        writes: list[tuple[Knob, int, list[str], list[str]]] = []
        for knob in KNOBS:
            ver = knob_version(knob)
            if ver is None or not changed & set(knob.keys):
                continue
            name = knob.file(ver)
            assert name is not None, "knob_version() gives only a version the knob has a file on"
            if knob.per_device:  # the file lists only devices with a rule: undo from the table
                undo = knob.values(ver, old, ctx)
            else:  # undo to what is live now (a change made without --save may differ from the config)
                cur = cgroups.read(knob.controller, rel, name)
                undo = [cur] if cur is not None else []
            writes.append((knob, ver, knob.values(ver, new, ctx), undo))
        if self._memsw_first(rel, writes):
            writes.sort(key=lambda w: w[0].file(w[1]) != "memory.memsw.limit_in_bytes")
        for knob, ver, values, undo in writes:
            name = knob.file(ver)
            assert name is not None, "checked above"

            def restore(controller: str = knob.controller, name: str = name, undo: list[str] = undo) -> None:
                for v in undo:
                    cgroups.write(controller, rel, name, v)

            # Registered first: a write that fails half-way (one device of several) is undone too.
            rb.add(f"restore {name} of VE {ctid}", restore)
            for value in values:
                self._write(ctid, knob.controller, rel, name, value, new)

    @staticmethod
    def _memsw_first(rel: str, writes: list) -> bool:
        """On v1, RAM+swap must never be below RAM: grow memsw first when the live RAM limit needs it."""
        new = {w[0].file(w[1]): w[2][0] for w in writes if w[2]}
        memsw = new.get("memory.memsw.limit_in_bytes")
        if memsw is None:
            return False
        live_limit = accounting._int(cgroups.read("memory", rel, "memory.limit_in_bytes"))
        memsw_n = accounting._int(memsw) if memsw != "-1" else None
        return memsw_n is None or (live_limit is not None and memsw_n >= live_limit)

    def _write(self, ctid: int, controller: str, rel: str, name: str, value: str, new: Limits) -> None:
        try:
            cgroups.write(controller, rel, name, value)
        except OSError as e:
            if e.errno == errno.EBUSY and name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                used = accounting._int(cgroups.read("memory", rel, "memory.usage_in_bytes"))
                raise InvalidInput(
                    f"VE {ctid} uses {human_limit(used)} of memory that the kernel could not reclaim below "
                    f"{human_limit(new.get('RAM'))} (+ swap {human_limit(new.get('SWAP'))}): stop some of its "
                    "processes or choose a higher limit") from None
            raise CommandFailed(f"cannot set {name} of VE {ctid} to {value}: {e.strerror}") from None

    # --- disk quota (the storage driver's) ------------------------------------------------
    def disk_used(self, ctid: int, fresh: bool = False) -> int | None:
        """Bytes the VE's root references; ``fresh`` commits pending writes first (slower)."""
        if not self.engine.storage.can_quota:
            return None
        private = self.engine.layout.private(ctid)
        if fresh:
            self.engine.storage.sync(private)
        return self.engine.storage.quota(private)[0]

    def _quota_limit(self, ctid: int) -> int | None:
        return self.engine.storage.quota(self.engine.layout.private(ctid))[1]

    def _set_quota(self, ctid: int, limit: int | None, rb: Rollback | None = None) -> None:
        private = self.engine.layout.private(ctid)
        storage = self.engine.storage
        if not storage.quota_on():
            raise Unsupported(f"quota is not enabled on the pool {self.engine.layout.pool}: "
                              f"run 'btrfs quota enable {self.engine.layout.pool}' first")
        before = self._quota_limit(ctid)
        storage.set_quota(private, limit)
        if rb is not None:
            rb.add(f"restore the disk quota of VE {ctid}", lambda: storage.set_quota(private, before))

    # --- start / stop ---------------------------------------------------------------------
    def before_start(self, conf: VEConfig) -> None:
        # lxcfs must serve /var/lib/lxcfs before LXC's mount hook binds it into the VE.
        if lxcfs.ensure(self.engine.layout) == "unavailable":
            log.warning("lxcfs is not available: VE %s will see the host's /proc/meminfo and cpuinfo",
                        conf.ctid)

    def lxc_config(self, conf: VEConfig) -> list[str]:
        lim = self.limits(conf)
        ctx = Context(self.engine)
        lines = []
        for knob in KNOBS:
            ver = knob_version(knob)
            if ver is None or all(lim.get(k) is None for k in knob.keys):
                continue
            prefix = "lxc.cgroup" if ver == 1 else "lxc.cgroup2"
            lines += [f"{prefix}.{knob.file(ver)} = {v}" for v in knob.values(ver, lim, ctx)]
        return lines

    def after_start(self, conf: VEConfig) -> None:
        # A quota set without --save lasts until the next start: bring it back to the config.
        if self.engine.storage.can_quota and self.engine.storage.quota_on():
            want = self.limits(conf)["DISKSPACE"]
            if self._quota_limit(conf.ctid) != want:
                self._set_quota(conf.ctid, want)

    def purge(self) -> None:
        lxcfs.stop(self.engine.layout)

    # --- accounting -----------------------------------------------------------------------
    def usage(self, conf: VEConfig) -> dict:
        """Usage of one VE (cpu seconds, memory bytes, nproc, disk bytes, ...): Engine.usage()."""
        return self.reader.read(conf.ctid)

    def usage_all(self) -> dict[int, dict]:
        """Usage of every VE of the root, read in one pass (cheap enough to poll each second)."""
        return self.reader.read_all()

    def info(self, conf: VEConfig, running: bool) -> dict:
        own = {key for key in KEYS if conf.get(key)}
        lim = self.limits(conf)
        return {"resources": {"limits": lim, "usage": self.reader.read(conf.ctid),
                              "node_defaults": sorted(k for k in NODE_DEFAULTS if k not in own and lim[k] is not None)}}

    def beancounters(self, ctid: int) -> list[dict]:
        conf = self.engine.config(ctid)
        return beancounters(self.reader.read(conf.ctid), self.limits(conf))
