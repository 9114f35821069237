"""The closed set of operations a node agent runs, each with its parameters' types and limits.

This and `server` are the only panel modules that import vzengine. Every parameter is checked here (type,
length, alphabet, range) before the engine sees it, and the engine validates its values again. No operation
takes a host path: backups are found by file name inside the agent's own backup directory, templates and
snapshots by validated name, VEs by CTID.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzengine import Engine, InvalidInput, NotFound, validate

# --- parameter types ---------------------------------------------------------------------------------


class Invalid(ValueError):
    """A parameter is missing, unknown or of the wrong type or size."""


@dataclass(frozen=True)
class P:
    """One parameter: a checker that returns the clean value or raises Invalid, and whether it is required."""

    check: Callable
    required: bool = False


def integer(lo: int, hi: int) -> Callable:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise Invalid(f"{name} must be a whole number from {lo} to {hi}")
        return v
    return check


def boolean(name, v):
    if not isinstance(v, bool):
        raise Invalid(f"{name} must be true or false")
    return v


def text(maxlen: int, pattern: str | None = None) -> Callable:
    rx = re.compile(pattern) if pattern else None

    def check(name, v):
        if not isinstance(v, str) or len(v) > maxlen or "\x00" in v:
            raise Invalid(f"{name} must be a string of at most {maxlen} characters")
        if rx is not None and not rx.fullmatch(v):
            raise Invalid(f"{name} {v[:60]!r} is not of the allowed form")
        return v
    return check


def text_list(max_items: int, maxlen: int, pattern: str | None = None) -> Callable:
    item = text(maxlen, pattern)

    def check(name, v):
        if not isinstance(v, list) or len(v) > max_items:
            raise Invalid(f"{name} must be a list of at most {max_items} strings")
        return [item(name, x) for x in v]
    return check


def scalar(maxlen: int = 32) -> Callable:
    """A limit value: "512M", "2", 2: no spaces, no shell or config metacharacters."""
    item = text(maxlen, r"[A-Za-z0-9.:_-]+")

    def check(name, v):
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        return item(name, v)
    return check


def userpasswd(name, v):
    if not isinstance(v, list) or not 1 <= len(v) <= 4:
        raise Invalid(f"{name} must be a list of 1-4 [user, password] pairs")
    out = []
    for pair in v:
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair)
                or len(pair[1]) > 256):
            raise Invalid(f"{name} must hold [user, password] pairs of strings (passwords up to 256 characters)")
        try:
            validate.username(pair[0])  # a ':' in the name would move it into the password
            validate.userpasswd(f"{pair[0]}:{pair[1]}")
        except InvalidInput as exc:
            raise Invalid(f"{name}: {exc.message}") from None
        out.append((pair[0], pair[1]))
    return out


CTID = P(integer(validate.CTID_MIN, validate.CTID_MAX), required=True)
NAME64 = text(64, r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BACKUP_NAME = r"ve-[0-9]{1,10}-[0-9]{8}-[0-9]{6}(-[0-9]{1,4})?\.tar\.zst"
ADDR = r"[0-9A-Za-z.:/_-]+"
# Limits and addresses a panel task may set on a VE: what an admin can do through the panel, no more.
VE_PARAMS = {
    "hostname": P(text(253)),
    "nameserver": P(text_list(8, 64, ADDR)),
    "userpasswd": P(userpasswd),
    "onboot": P(boolean),
    "ram": P(scalar()), "swap": P(scalar()), "cpus": P(scalar()), "cpuunits": P(scalar()),
    "cpulimit": P(scalar()), "numproc": P(scalar()), "diskspace": P(scalar()), "iolimit": P(scalar()),
    "ipadd": P(text_list(64, 64, ADDR)),
    "portfwd": P(text_list(64, 64, ADDR)),
}
SET_ONLY = {
    "ipdel": P(text_list(64, 64, ADDR)),
    "portfwd_del": P(text_list(64, 64, ADDR)),
    "save": P(boolean),
}


# --- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable
    params: dict[str, P]
    doc: str


OPS: dict[str, Op] = {}


def op(name: str, /, **params: P):
    """Register fn as operation ``name`` taking exactly ``params``."""

    def register(fn):
        OPS[name] = Op(name, fn, params, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn
    return register


def check_params(o: Op, params: dict) -> dict:
    """Return params cleaned by o's checkers; raise Invalid for unknown, missing or bad ones."""
    unknown = sorted(set(params) - set(o.params))
    if unknown:
        raise Invalid(f"operation {o.name} takes no parameter {unknown[0][:40]!r}")
    out = {}
    for name, spec in o.params.items():
        if name not in params or params[name] is None:
            if spec.required:
                raise Invalid(f"operation {o.name} needs parameter {name!r}")
            continue
        out[name] = spec.check(name, params[name])
    return out


class Context:
    """What an operation runs with: the node's engine and where this agent keeps backups."""

    def __init__(self, engine: Engine, backup_dir: Path, progress):
        self.engine = engine
        self.backup_dir = backup_dir
        self.progress = progress


def info(vi) -> dict:
    return vi.to_dict()


# --- VEs -----------------------------------------------------------------------------------------------

@op("status", ctid=CTID)
def _status(c: Context, ctid):
    """Report one VE's state."""
    return info(c.engine.status(ctid))


@op("exists", ctid=CTID)
def _exists(c: Context, ctid):
    """Whether the node has VE ctid."""
    return c.engine.exists(ctid)


@op("is_suspended", ctid=CTID)
def _is_suspended(c: Context, ctid):
    """Whether VE ctid is suspended (saved with CRIU)."""
    return c.engine.is_suspended(ctid)


@op("usage", ctid=CTID)
def _usage(c: Context, ctid):
    """What VE ctid uses now."""
    return c.engine.usage(ctid)


@op("list", usage=P(boolean))
def _list(c: Context, usage=False):
    """Report every VE of the node, with the running ones' usage when asked (one pass over cgroups)."""
    out = []
    for vi in c.engine.list():
        d = info(vi)
        if usage and vi.status == "running":
            d["usage"] = listed_usage(vi)
            if d["usage"] is None:  # an engine without the resources feature: ask (Engine.usage)
                with contextlib.suppress(Exception):
                    d["usage"] = c.engine.usage(vi.ctid)
        out.append(d)
    return out


# Engine.usage's keys of the network feature, which VEInfo.extra also carries (vzengine/RESOURCES.md).
NET_TOTALS = ("net_in_bytes", "net_in_packets", "net_out_bytes", "net_out_packets")


def listed_usage(vi) -> dict | None:
    """What Engine.usage would say of a listed VE, from what Engine.list already read into its extra (its
    resources' usage and its net_* totals), so a reconcile reads each VE's cgroups once, not twice."""
    extra = vi.extra or {}
    usage = (extra.get("resources") or {}).get("usage")
    if usage is None:
        return None
    return {**usage, **{key: extra[key] for key in NET_TOTALS if key in extra}}


@op("create", ctid=CTID, ostemplate=P(text(64), required=True), **VE_PARAMS)
def _create(c: Context, ctid, ostemplate, **params):
    """Create VE ctid from a template."""
    return info(c.engine.create(ctid, validate.template_name(ostemplate), progress=c.progress, **params))


@op("start", ctid=CTID, wait_boot=P(boolean))
def _start(c: Context, ctid, wait_boot=False):
    """Start VE ctid."""
    return info(c.engine.start(ctid, wait_boot=wait_boot, progress=c.progress))


@op("stop", ctid=CTID, fast=P(boolean))
def _stop(c: Context, ctid, fast=False):
    """Stop VE ctid (cleanly, or at once with fast)."""
    return info(c.engine.stop(ctid, fast=fast, progress=c.progress))


@op("restart", ctid=CTID, wait_boot=P(boolean))
def _restart(c: Context, ctid, wait_boot=False):
    """Restart VE ctid."""
    return info(c.engine.restart(ctid, wait_boot=wait_boot, progress=c.progress))


@op("destroy", ctid=CTID)
def _destroy(c: Context, ctid):
    """Destroy VE ctid with its snapshots (its backups stay)."""
    c.engine.destroy(ctid, progress=c.progress)


@op("set", ctid=CTID, **VE_PARAMS, **SET_ONLY)
def _set(c: Context, ctid, **params):
    """Change VE ctid's settings and limits (live where it runs)."""
    return info(c.engine.set(ctid, progress=c.progress, **params))


@op("portfwd_list", ctid=CTID)
def _portfwd_list(c: Context, ctid):
    """The port forwards of VE ctid, as its config lists them."""
    return c.engine.config(ctid).get_list("PORTFWD")


@op("reinstall", ctid=CTID, ostemplate=P(text(64)), snapshot=P(boolean))
def _reinstall(c: Context, ctid, ostemplate=None, snapshot=True):
    """Give VE ctid a fresh root from a template."""
    ostemplate = validate.template_name(ostemplate) if ostemplate else None
    return info(c.engine.reinstall(ctid, ostemplate=ostemplate, snapshot=snapshot, progress=c.progress))


@op("new_identity", ctid=CTID, hostname=P(text(253)))
def _new_identity(c: Context, ctid, hostname=None):
    """Give a stopped VE its own machine-id and SSH host keys."""
    c.engine.new_identity(ctid, validate.hostname(hostname) if hostname else None)


@op("suspend", ctid=CTID)
def _suspend(c: Context, ctid):
    """Save VE ctid's processes to disk with CRIU and stop it."""
    return c.engine.suspend(ctid, progress=c.progress)


@op("resume", ctid=CTID)
def _resume(c: Context, ctid):
    """Bring a suspended VE back with its processes."""
    return c.engine.resume(ctid, progress=c.progress)


@op("rescue_enter", ctid=CTID, template=P(text(64)))
def _rescue_enter(c: Context, ctid, template=None):
    """Boot VE ctid into the node's rescue system (or template), its own root at /mnt; stopped first if it runs."""
    from vzengine import rescue

    template = validate.template_name(template) if template else None
    return info(rescue.enter(c.engine, ctid, template=template, wait_boot=True, progress=c.progress))


@op("rescue_leave", ctid=CTID, start=P(boolean))
def _rescue_leave(c: Context, ctid, start=False):
    """Stop VE ctid's rescue system and remove its temporary root; boot the VE's own system with start."""
    from vzengine import rescue

    return info(rescue.leave(c.engine, ctid, start=start, wait_boot=start, progress=c.progress))


def ctid_list(name, v):
    if not isinstance(v, list) or len(v) > 10000:
        raise Invalid(f"{name} must be a list of at most 10000 VE ids")
    return [CTID.check(name, x) for x in v]


@op("sessions", ctids=P(ctid_list, required=True))
def _sessions(c: Context, ctids):
    """Count the interactive sessions (a terminal, or an attach from the host) of each running VE."""
    return {str(ctid): interactive_sessions(c.engine, ctid) for ctid in ctids}


def interactive_sessions(eng: Engine, ctid: int) -> int:
    """Sessions in a VE that someone is using: a terminal (SSH login, console) or an attach from the host.

    Reads the VE's /proc entries, which its root controls: only numbers are taken from them, and only from
    /proc itself (never a file inside the VE's tree).
    """
    from vzengine import cgroups

    rel = eng.layout.cgroup_dir(ctid)
    top = cgroups.path("pids", rel) or cgroups.path("memory", rel)
    if top is None or not top.is_dir():
        return 0
    sessions = set()
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" not in files:
            continue
        with contextlib.suppress(OSError):
            for pid in Path(dirpath, "cgroup.procs").read_text().split()[:100000]:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = Path(f"/proc/{int(pid)}/stat").read_text()[:4096].rsplit(")", 1)[1].split()
                    session, tty = int(fields[3]), int(fields[4])
                    status = Path(f"/proc/{int(pid)}/status").read_text()[:16384]
                    nssid = re.search(r"^NSsid:\s*(.*)$", status, re.M)
                    outside = nssid is not None and nssid.group(1).split()[-1] == "0"
                    if tty or outside:
                        sessions.add(session)
    return len(sessions)


# --- snapshots ---------------------------------------------------------------------------------------

@op("snapshot", ctid=CTID, name=P(NAME64, required=True), description=P(text(500)))
def _snapshot(c: Context, ctid, name, description=""):
    """Take a snapshot of VE ctid."""
    c.engine.snapshot(ctid, validate.snapshot_name(name), description, progress=c.progress)


@op("snapshot_list", ctid=CTID)
def _snapshot_list(c: Context, ctid):
    """List VE ctid's snapshots with their sizes."""
    return [s.to_dict() for s in c.engine.snapshot_list(ctid)]


@op("snapshot_switch", ctid=CTID, name=P(NAME64, required=True))
def _snapshot_switch(c: Context, ctid, name):
    """Roll VE ctid back to a snapshot."""
    return info(c.engine.snapshot_switch(ctid, validate.snapshot_name(name), progress=c.progress))


@op("snapshot_delete", ctid=CTID, name=P(NAME64, required=True))
def _snapshot_delete(c: Context, ctid, name):
    """Delete a snapshot of VE ctid."""
    c.engine.snapshot_delete(ctid, validate.snapshot_name(name), progress=c.progress)


# --- backups: files in the agent's own directory, found by name ------------------------------------
# The engine checks the name (its own naming only), opens the file without following links and refuses
# anything but a regular file; the directory must be root's and not writable by anyone else.

@op("backup", ctid=CTID)
def _backup(c: Context, ctid):
    """Back VE ctid up into the node's backup directory and verify the archive; a bad one is removed."""
    written = c.engine.backup(ctid, c.backup_dir, progress=lambda p, m: c.progress(p * 3 // 4, m))
    name = Path(written.path).name
    try:
        manifest = c.engine.backup_verify_named(name, c.backup_dir,
                                                progress=lambda p, m: c.progress(75 + p // 5, m))
    except BaseException:
        with contextlib.suppress(Exception):
            c.engine.backup_delete_named(name, c.backup_dir)
        raise
    return {"name": name, "path": str(written.path), "size": written.size, "manifest": manifest}


@op("restore", name=P(text(80, BACKUP_NAME), required=True), ctid=CTID, force=P(boolean))
def _restore(c: Context, name, ctid, force=False):
    """Restore backup file ``name`` as VE ctid (over it with force)."""
    return info(c.engine.restore_named(name, ctid, c.backup_dir, force=force, progress=c.progress))


@op("backup_exists", name=P(text(80, BACKUP_NAME), required=True))
def _backup_exists(c: Context, name):
    """Whether backup file ``name`` is on this node (a regular file in the backup directory)."""
    from vzengine.backup import open_named

    try:
        open_named(c.backup_dir, name).close()
    except NotFound:
        return False
    return True


@op("backup_delete", name=P(text(80, BACKUP_NAME), required=True))
def _backup_delete(c: Context, name):
    """Delete backup file ``name`` from this node; false if it was not there."""
    try:
        c.engine.backup_delete_named(name, c.backup_dir)
    except NotFound:
        return False
    return True


# --- templates ----------------------------------------------------------------------------------------

@op("templates")
def _templates(c: Context):
    """List the node's templates."""
    return [{"name": t.name, "description": t.description or "", "built": bool(t.built), "init": t.init}
            for t in c.engine.templates.list()]


@op("template_build", name=P(text(64), required=True))
def _template_build(c: Context, name):
    """Build one of the engine's own templates (its template store's recipes) into this node's cache and pool,
    for the panel's template push; a template that is already there is left as it is."""
    from vzengine.templates import SPECS

    name = validate.template_name(name)
    if name not in SPECS:
        raise NotFound(f"template {name} has no recipe in the engine's template store; known: "
                       f"{', '.join(sorted(SPECS))}")
    c.engine.ensure_ready()
    c.engine.templates.ensure(name, progress=c.progress)
    return {"name": name, "built": True}


# The panel saves and removes only course images: never a template other VEs are built from by everyone
# (replacing debian-12 with a VE's files would reach every customer's next VE).
IMAGE_NAME = r"course[0-9]{1,10}-v[0-9]{1,6}"


@op("template_save", ctid=CTID, name=P(text(64, IMAGE_NAME), required=True), description=P(text(200)),
    replace=P(boolean))
def _template_save(c: Context, ctid, name, description="", replace=False):
    """Save VE ctid as a course's golden image (course<N>-v<M>)."""
    from vzengine.templates import save_ve

    return save_ve(c.engine, ctid, validate.template_name(name), description=description, replace=replace,
                   progress=c.progress)


@op("template_remove", name=P(text(64, IMAGE_NAME), required=True))
def _template_remove(c: Context, name):
    """Remove a course's golden image from the node."""
    c.engine.templates.remove(validate.template_name(name))


@op("pool_info")
def _pool_info(c: Context):
    """The storage pool's size, use and whether its disk quotas hold ({"set_up": false} before the first VE),
    with the node's CPUs and memory: the capacity the panel places VEs against (vzpanel.nodes.health)."""
    machine = {"cpus": os.cpu_count() or 1,
               "ram_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)}
    if not c.engine.layout.root.is_dir():
        return {"set_up": False, **machine}  # asking must not create the engine root
    return {"set_up": True, **c.engine.pool_info(), **machine}


@op("ssh_keys_set", ctid=CTID, keys=P(text_list(32, 16384), required=True),
    password_login=P(boolean, required=True))
def _ssh_keys_set(c: Context, ctid, keys, password_login):
    """Make keys root's authorized_keys in VE ctid; switch password log-in over SSH on or off."""
    from vzengine import sshkeys

    try:
        keys = [sshkeys.check_key(k) for k in keys]
    except InvalidInput as exc:
        raise Invalid(f"keys: {exc.message}") from None
    return sshkeys.set_keys(c.engine, ctid, keys, password_login)


@op("metrics_sample", interval=P(integer(1, 3600)))
def _metrics_sample(c: Context, interval=10):
    """One pass over the node's VEs and the host for the panel's graphs (vzengine/sampling.py)."""
    from vzengine import accounting, cgroups
    from vzengine.network import ifname
    from vzengine.sampling import sampler_for

    layout = c.engine.layout
    reader = accounting.UsageReader(layout) if layout.root.is_dir() else None
    return sampler_for(layout.root).sample(
        c.engine, cgroups.path, interval, subvolume_id=accounting.subvolume_id,
        qgroups=reader.qgroups if reader else None, ifname=lambda ctid: ifname(layout.tag, ctid))


@op("ping")
def _ping(c: Context):
    """Answer, so the panel knows the agent runs."""
    return {"pid": os.getpid()}


# --- the per-VE firewall (vzengine/vefirewall.py) --------------------------------------------------

FIREWALL_RULE = r"[a-z]{3,6} [a-z]{3,4}( [0-9]{1,5}(-[0-9]{1,5})?)?( from [0-9A-Fa-f.:/]{2,43})?"


@op("firewall_set", ctid=CTID, policy=P(text(6, r"accept|drop"), required=True),
    rules=P(text_list(64, 80, FIREWALL_RULE), required=True))
def _firewall_set(c: Context, ctid, policy, rules):
    """Replace VE ctid's firewall (policy and every rule), live where it runs, and save it."""
    return info(c.engine.set(ctid, firewall_policy=policy, firewall_rules=rules, save=True, progress=c.progress))


# --- monthly traffic (vzpanel/traffic): counters of every VE, and the rate of one over its quota ---------

def _network(eng: Engine):
    return next(f for f in eng.features if f.name == "network")


@op("traffic_counters")
def _traffic_counters(c: Context):
    """Every VE's traffic in one pass: bytes since it was made, and its network's current run."""
    net = _network(c.engine)
    out = {}
    for ctid in c.engine.ctids():
        # The run first: the totals read after it hold at least these counts, so a reading never
        # makes the panel count a byte twice (vzpanel/traffic/accounting.py).
        run = net._veth_run(ctid)
        total_in, _, total_out, _ = net.totals(ctid)
        name, counts = run if run is not None else ("", (0, 0, 0, 0))
        out[str(ctid)] = {"in": total_in, "out": total_out, "run": name, "run_in": counts[0], "run_out": counts[2]}
    return out


@op("traffic_throttle", ctid=CTID, kbit=P(integer(8, 100_000_000), required=True))
def _traffic_throttle(c: Context, ctid, kbit):
    """Cut VE ctid's rate to at most kbit/s each way, live and saved; say what its own rate was."""
    conf = c.engine.config(ctid)
    before = conf.get("RATE")
    current = _network(c.engine).limits(conf)[0]
    if current is not None and current <= kbit:
        return {"before": before, "rate_kbit": current, "changed": False}
    c.engine.set(ctid, rate=str(kbit), save=True, progress=c.progress)
    return {"before": before, "rate_kbit": kbit, "changed": True}


@op("traffic_unthrottle", ctid=CTID, kbit=P(integer(8, 100_000_000), required=True),
    before=P(text(16, r"[A-Za-z0-9.]{0,16}"), required=True))
def _traffic_unthrottle(c: Context, ctid, kbit, before):
    """Give VE ctid its rate from before a throttle back, unless its rate is no longer kbit (changed since)."""
    if c.engine.config(ctid).get("RATE") != str(kbit):
        return False
    c.engine.set(ctid, rate=before or "default", save=True, progress=c.progress)
    return True
