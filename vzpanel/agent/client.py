"""Call a node agent from the panel's unprivileged processes: `RemoteEngine(node).start(101)`.

The methods mirror the engine's (create, start, stop, set, snapshot, backup, ...), so the task handlers read
as before; each one is a request to the node's agent, whose progress events reach the ``progress`` callable
and whose result comes back as plain data (`Record`, `VEInfo`). Errors come back as `errors.AgentError`
subclasses. Nothing here imports vzengine.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis

from . import errors, protocol

Progress = Callable[[int | None, str], None]
DEFAULT_TIMEOUT = 3600.0  # building a template the first time takes minutes
POLL = 2  # seconds one BLPOP waits before the client checks the agent is still alive (redis-py 8 times reads out at 5 s)


def _quiet(_p, _m=""):
    pass


@dataclass
class VEInfo:
    """What the engine reports about a VE (the engine's VEInfo, as data)."""

    ctid: int
    status: str
    hostname: str = ""
    ostemplate: str = ""
    ip_addresses: list[str] = field(default_factory=list)
    nproc: int | None = None
    onboot: bool = False
    nameservers: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    usage: dict | None = None  # with list(usage=True): what a running VE uses now

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VEInfo:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class Record(dict):
    """A result object whose fields read as attributes too (``snap.name`` and ``snap["name"]``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return dict(self)


@functools.cache
def connect(url: str) -> redis.Redis:
    """A Redis client for agent calls: its reads wait longer than the longest BLPOP (RQ's work horses set a
    5 s socket timeout on the connections they inherit, the length of one BLPOP)."""
    return redis.Redis.from_url(url, socket_timeout=POLL + 25, health_check_interval=30)


def sender() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} uid {os.getuid()}"


class RemoteEngine:
    """The engine of one node, reached through its agent."""

    def __init__(self, node: str, connection: redis.Redis, timeout: float = DEFAULT_TIMEOUT):
        self.node = protocol.check_node(node)
        self.redis = connection
        self.timeout = timeout

    # --- the one call ---------------------------------------------------------------------------
    def call(self, op: str, progress: Progress | None = None, timeout: float | None = None, **params):
        """Run operation op on the node's agent; return its result (plain JSON data)."""
        progress = progress or _quiet
        request_id, body = protocol.encode_request(op, params, sender())
        reply = protocol.reply_key(self.node, request_id)
        try:
            self.redis.rpush(protocol.requests_key(self.node), body)
            deadline = time.monotonic() + (timeout or self.timeout)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.Unavailable(f"node {self.node}'s agent did not finish {op} within "
                                             f"{timeout or self.timeout:g} s")
                got = self.redis.blpop([reply], timeout=max(1, min(POLL, int(left))))
                if got is None:
                    if not self.redis.exists(protocol.alive_key(self.node)):
                        # It may still be queued behind a dead agent: take it back if it is.
                        self.redis.lrem(protocol.requests_key(self.node), 1, body)
                        raise errors.Unavailable(f"node {self.node}'s agent is not running; {op} was not done"
                                                 " or its outcome is unknown")
                    continue
                ev = json.loads(got[1])
                kind = ev.get("t")
                if kind == "progress":
                    progress(ev.get("p"), ev.get("m") or "")
                elif kind == "result":
                    return ev.get("value")
                elif kind == "error":
                    raise errors.from_reply(ev.get("kind", ""), ev.get("message") or "failed")
                elif kind == "bug":
                    raise errors.AgentBug(ev.get("message") or "the agent failed", ev.get("ref", ""))
        except redis.RedisError as exc:
            raise errors.Unavailable(f"node {self.node}'s agent cannot be reached through Redis: {exc}") from None

    def alive(self) -> bool:
        """Whether the node's agent announced itself within the last few seconds."""
        try:
            return bool(self.redis.exists(protocol.alive_key(self.node)))
        except redis.RedisError:
            return False

    # --- the engine's methods, as the panel uses them ----------------------------------------------
    def _info(self, op, progress=None, **params) -> VEInfo:
        return VEInfo.from_dict(self.call(op, progress, **params))

    def status(self, ctid: int) -> VEInfo:
        return self._info("status", ctid=ctid)

    def list(self, usage: bool = False) -> list[VEInfo]:
        return [VEInfo.from_dict(d) for d in self.call("list", usage=usage)]

    def exists(self, ctid: int) -> bool:
        return bool(self.call("exists", ctid=ctid))

    def is_running(self, ctid: int) -> bool:
        return self.status(ctid).running

    def is_suspended(self, ctid: int) -> bool:
        return bool(self.call("is_suspended", ctid=ctid))

    def usage(self, ctid: int) -> dict:
        return self.call("usage", ctid=ctid)

    def create(self, ctid: int, ostemplate: str, progress: Progress | None = None, **params) -> VEInfo:
        return self._info("create", progress, ctid=ctid, ostemplate=ostemplate, **_plain(params))

    def start(self, ctid: int, wait_boot: bool = False, progress: Progress | None = None) -> VEInfo:
        return self._info("start", progress, ctid=ctid, wait_boot=wait_boot)

    def stop(self, ctid: int, fast: bool = False, progress: Progress | None = None) -> VEInfo:
        return self._info("stop", progress, ctid=ctid, fast=fast)

    def restart(self, ctid: int, progress: Progress | None = None, wait_boot: bool = False) -> VEInfo:
        return self._info("restart", progress, ctid=ctid, wait_boot=wait_boot)

    def destroy(self, ctid: int, progress: Progress | None = None) -> None:
        self.call("destroy", progress, ctid=ctid)

    def set(self, ctid: int, progress: Progress | None = None, **params) -> VEInfo:
        return self._info("set", progress, ctid=ctid, **_plain(params))

    def portfwd_list(self, ctid: int) -> list[str]:
        return list(self.call("portfwd_list", ctid=ctid))

    def reinstall(self, ctid: int, ostemplate: str | None = None, snapshot: bool = True,
                  progress: Progress | None = None) -> VEInfo:
        return self._info("reinstall", progress, ctid=ctid, ostemplate=ostemplate, snapshot=snapshot)

    def new_identity(self, ctid: int, hostname: str | None = None) -> None:
        self.call("new_identity", ctid=ctid, hostname=hostname)

    def suspend(self, ctid: int, progress: Progress | None = None) -> dict:
        return self.call("suspend", progress, ctid=ctid)

    def resume(self, ctid: int, progress: Progress | None = None) -> dict:
        return self.call("resume", progress, ctid=ctid)

    def rescue_enter(self, ctid: int, template: str | None = None, progress: Progress | None = None) -> VEInfo:
        """Boot the VE into the node's rescue system with its own root at /mnt (vzengine/rescue.py)."""
        return self._info("rescue_enter", progress, ctid=ctid, **_plain({"template": template}))

    def rescue_leave(self, ctid: int, start: bool = False, progress: Progress | None = None) -> VEInfo:
        """Stop the VE's rescue system and remove its temporary root; boot the VE itself with start."""
        return self._info("rescue_leave", progress, ctid=ctid, start=start)

    def snapshot(self, ctid: int, name: str, description: str = "", progress: Progress | None = None) -> None:
        self.call("snapshot", progress, ctid=ctid, name=name, description=description)

    def snapshot_list(self, ctid: int) -> list[Record]:
        return [Record(d) for d in self.call("snapshot_list", ctid=ctid)]

    def snapshot_switch(self, ctid: int, name: str, progress: Progress | None = None) -> VEInfo:
        return self._info("snapshot_switch", progress, ctid=ctid, name=name)

    def snapshot_delete(self, ctid: int, name: str, progress: Progress | None = None) -> None:
        self.call("snapshot_delete", progress, ctid=ctid, name=name)

    def backup(self, ctid: int, progress: Progress | None = None) -> Record:
        """Back the VE up into the node's backup directory; return name, path, size and the verified manifest."""
        return Record(self.call("backup", progress, ctid=ctid))

    def restore(self, backup: str, ctid: int, force: bool = False, progress: Progress | None = None) -> VEInfo:
        """Restore the backup file named ``backup`` (a file name in the node's backup directory) as VE ctid."""
        return self._info("restore", progress, name=backup, ctid=ctid, force=force)

    def backup_delete(self, backup: str) -> bool:
        return bool(self.call("backup_delete", name=backup))

    def backup_exists(self, backup: str) -> bool:
        return bool(self.call("backup_exists", name=backup))

    def templates(self) -> list[Record]:
        return [Record(d) for d in self.call("templates")]

    def template_save(self, ctid: int, name: str, description: str = "", replace: bool = False,
                      progress: Progress | None = None) -> dict:
        return self.call("template_save", progress, ctid=ctid, name=name, description=description,
                         replace=replace)

    def template_remove(self, name: str) -> None:
        self.call("template_remove", name=name)

    def firewall_set(self, ctid: int, policy: str, rules: list[str], progress: Progress | None = None) -> VEInfo:
        """Replace the VE's firewall: its default policy and the whole rule list (vzengine/vefirewall.py)."""
        return self._info("firewall_set", progress, ctid=ctid, policy=policy, rules=list(rules))

    def sessions(self, ctids: list[int]) -> dict[int, int]:
        """How many interactive sessions (a terminal, or an attach from the host) each running VE has."""
        return {int(k): v for k, v in self.call("sessions", ctids=list(ctids)).items()}

    def ssh_keys_set(self, ctid: int, keys: list[str], password_login: bool = True) -> dict:
        """Make keys root's authorized_keys in the VE and switch password log-in over SSH on or off."""
        return self.call("ssh_keys_set", ctid=ctid, keys=list(keys), password_login=bool(password_login))


def _plain(params: dict) -> dict:
    """Drop unset keyword arguments and turn tuples into lists, as JSON has them."""
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, list):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[key] = value
    return out
