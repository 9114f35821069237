"""The node agent's loop: take requests from the node's Redis list, run registered operations, answer.

Run as root on each node: ``python -m vzpanel.agent --node NAME`` (``manage.py serve`` starts it). It reads
Redis with the node's own credentials (``VZPANEL_AGENT_REDIS_URL``, else ``REDIS_URL``), keeps no database
connection, and answers each request on its own reply list (`protocol`). A request it cannot take (not the
documented JSON, an unknown operation, parameters that fail their checks) runs nothing: the agent answers
"refused" and records it, with the sender the request named and the time, in its refusal log (a Redis list
the panel copies into its audit log, and the agent's own log on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from . import protocol
from .ops import OPS, Context, Invalid, check_params

log = logging.getLogger("vzpanel.agent")
STOP_GRACE = 10.0  # seconds running operations get to finish when the agent is told to stop


class Agent:
    def __init__(self, node: str, connection: redis.Redis, threads: int = 8, vz_root: str | None = None,
                 backup_dir: str | None = None, lock_wait: float = 60.0):
        self.node = protocol.check_node(node)
        self.redis = connection
        self.threads = max(1, threads)
        self.vz_root = vz_root or None
        self.backup_dir = backup_dir
        self.lock_wait = lock_wait
        self.stopping = threading.Event()
        self.slots = threading.BoundedSemaphore(self.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="op")
        self.running = 0
        self._count = threading.Lock()

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stop() is called; then let running operations finish for up to STOP_GRACE seconds."""
        self._prepare()
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        threading.Thread(target=self._watch_veths, name="veth-watch", daemon=True).start()
        key = protocol.requests_key(self.node)
        log.warning("node agent for %s serving %s with %d thread(s)", self.node, key, self.threads)
        try:
            while not self.stopping.is_set():
                if not self.slots.acquire(timeout=1):
                    continue  # every thread is busy: leave requests to another agent of this node
                try:
                    got = self.redis.blpop([key], timeout=1)
                except redis.RedisError as exc:
                    self.slots.release()
                    log.warning("redis: %s; retrying", exc)
                    self.stopping.wait(1)
                    continue
                if got is None:
                    self.slots.release()
                    continue
                self.pool.submit(self._serve, got[1])
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + STOP_GRACE
            while self.running and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(protocol.alive_key(self.node))

    def _prepare(self) -> None:
        """Make an existing engine root ready before the first request: its pool mounted (after a reboot), its
        quota data checked (an inconsistent pool is rescanned here, not under a customer's first task). A root
        that does not exist yet is made by the first request that needs it, not by starting an agent."""
        from vzengine import Engine, VZError

        try:
            engine = Engine(self.vz_root)
            if engine.layout.root.is_dir():
                engine.ensure_ready()
        except VZError as exc:
            log.error("the engine root is not ready: %s (requests will say so)", exc.message)

    def _watch_veths(self) -> None:
        """Keep the last traffic counts of a VE veth deleted under the engine (a VE's root can delete its own
        eth0, and the host's end with it): the monthly traffic must not lose what it moved (ops: the network
        feature's veth_deleted)."""
        from vzengine import Engine, VZError, netlink

        engine = Engine(self.vz_root)  # reads the root's settings only; its VEs are looked up per deletion
        net = next((f for f in engine.features if f.name == "network"), None)
        if net is None:
            return

        def deleted(name, index, stats):
            try:
                if name.startswith(net.ifprefix):
                    ctid = net.veth_deleted(name, index, stats)
                    if ctid is not None:
                        log.info("VE %s: kept the last counts of its deleted veth %s", ctid, name)
            except (VZError, OSError) as exc:
                log.warning("could not keep the counts of deleted veth %s: %s", name, exc)

        while not self.stopping.is_set():
            try:
                netlink.watch_deleted_links(deleted, self.stopping)
            except Exception:  # a netlink hiccup must not end the agent: watch again
                log.exception("watching deleted veths failed; watching again")
                self.stopping.wait(1)

    def stop(self, *_args) -> None:
        self.stopping.set()

    def _heartbeat(self) -> None:
        key = protocol.alive_key(self.node)
        while not self.stopping.is_set():
            with contextlib.suppress(redis.RedisError):
                self.redis.set(key, json.dumps({"pid": os.getpid(), "at": time.time()}), ex=protocol.ALIVE_TTL)
            self.stopping.wait(protocol.ALIVE_TTL / 3)

    # --- one request ----------------------------------------------------------------------------------
    def _serve(self, raw: bytes) -> None:
        with self._count:
            self.running += 1
        try:
            self.handle(raw)
        except Exception:  # a bug in the agent itself: say so in its log; the client times out on it
            log.exception("handling a request failed")
        finally:
            with self._count:
                self.running -= 1
            self.slots.release()

    def handle(self, raw: bytes) -> None:
        """Check one raw request and run it; every outcome is an answer on its reply list."""
        try:
            msg = protocol.decode_request(raw)
        except protocol.BadRequest as exc:
            self.refuse(None, "?", "", f"malformed request: {exc}", raw[:200])
            return
        request_id, name, sender = msg["id"], msg["op"], msg["sender"]
        reply = protocol.reply_key(self.node, request_id)
        o = OPS.get(name)
        if o is None:
            self.refuse(reply, name, sender, f"unknown operation {name!r}")
            return
        try:
            params = check_params(o, msg["params"])
        except Invalid as exc:
            self.refuse(reply, name, sender, str(exc))
            return
        self.answer(reply, o, params)

    def answer(self, reply: str, o, params: dict) -> None:
        from vzengine import Engine, VZError

        def progress(percent, message=""):
            self.send(reply, protocol.event("progress", p=percent, m=str(message or "")[:500]))

        try:
            engine = Engine(self.vz_root, lock_wait=self.lock_wait)
            backup_dir = Path(self.backup_dir) if self.backup_dir else engine.layout.root / "backups"
            value = o.run(Context(engine, backup_dir, progress), **params)
        except VZError as exc:
            self.send(reply, protocol.event("error", kind=_base_kind(exc), message=exc.message))
        except Exception:
            ref = "A" + secrets.token_hex(4).upper()
            log.error("operation %s failed (ref %s):\n%s", o.name, ref, traceback.format_exc())
            self.send(reply, protocol.event("bug", message=f"the node agent failed running {o.name}", ref=ref))
        else:
            self.send(reply, protocol.event("result", value=value))

    def send(self, reply: str, body: bytes) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(reply, body)
            pipe.expire(reply, protocol.REPLY_TTL)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not answer on %s: %s", reply, exc)

    def refuse(self, reply: str | None, name: str, sender: str, why: str, raw: bytes = b"") -> None:
        """Answer 'refused', and record who asked what and why it was refused."""
        log.warning("refused %s from %r: %s", name[:60], sender, why)
        record = {"at": time.time(), "node": self.node, "op": name[:60], "sender": sender, "why": why[:500]}
        if raw:
            record["raw"] = raw.decode(errors="replace")
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(protocol.refused_key(self.node), json.dumps(record))
            pipe.ltrim(protocol.refused_key(self.node), -1000, -1)
            pipe.execute()
        except redis.RedisError:
            pass
        if reply is not None:
            self.send(reply, protocol.event("error", kind="Refused", message=f"the node agent refused {name}: {why}"))


KINDS = {"InvalidInput", "NotFound", "AlreadyExists", "StateError", "Busy", "CommandFailed", "Unsupported"}


def _base_kind(exc) -> str:
    """The engine's error kind of exc (a subclass such as BadArchive reports its base, InvalidInput)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in KINDS:
            return cls.__name__
    return "VZError"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vzpanel.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=os.environ.get("VZPANEL_NODE", "local"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("VZPANEL_AGENT_THREADS", "8")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("VZPANEL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s agent %(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("vzpanel agent: run as root (it drives the node's engine)", file=sys.stderr)
        return 1
    url = os.environ.get("VZPANEL_AGENT_REDIS_URL") or os.environ.get("REDIS_URL")
    if not url:
        print("vzpanel agent: set VZPANEL_AGENT_REDIS_URL (or REDIS_URL) to the panel's Redis", file=sys.stderr)
        return 1
    try:
        node = protocol.check_node(args.node)
    except ValueError as exc:
        print(f"vzpanel agent: {exc}", file=sys.stderr)
        return 2
    agent = Agent(node, redis.Redis.from_url(url, socket_timeout=30), threads=args.threads,
                  vz_root=os.environ.get("VZ_ROOT") or None, backup_dir=os.environ.get("VZPANEL_BACKUP_DIR") or None)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.run()
    return 0
