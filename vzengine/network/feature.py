"""NetworkFeature: the engine's network feature, put together from the modules of this package.

It holds what a VE's network is as a whole: its settings and names, the root's network lock,
checking and applying ``vzctl set`` options, and the VE's life cycle (start, reboot, stop,
destroy, purge). The parts live next to it: routed veths (veth.py), bridged interfaces
(bridge.py), rate and conntrack limits (fairness.py), traffic totals (traffic.py), namespaces
(netns.py); each is a mixin of this class and names what it needs from it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Busy, InvalidInput, StateError
from ..features import Feature
from ..firewall import Firewall, PortForward, have_ipv6
from ..layout import read_kv
from ..lock import flock_within
from . import hooks
from .addresses import Address, parse_forward, stored_addresses
from .bridge import BridgedMixin
from .fairness import LimitsMixin
from .naming import ifname, ifprefix
from .netns import NetnsMixin
from .pool import Claims, NetSettings
from .traffic import COUNTERS, TrafficMixin
from .veth import RoutedMixin

if TYPE_CHECKING:
    from ..layout import Layout
    from ..rollback import Rollback
    from ..veconf import VEConfig

LOCK_WAIT = 60.0


class NetworkFeature(RoutedMixin, BridgedMixin, LimitsMixin, TrafficMixin, NetnsMixin, Feature):
    name = "network"
    params = ("ipadd", "ipdel", "portfwd", "portfwd_del", "netif_add", "netif_del", "bridge", "rate", "conntrack")

    # --- names and settings ---------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return self.engine.layout

    def settings(self) -> NetSettings:
        return NetSettings.load(self.layout.settings)

    def ifname(self, ctid: int) -> str:
        return ifname(self.layout.tag, ctid)

    @property
    def ifprefix(self) -> str:
        return ifprefix(self.layout.tag)

    @property
    def firewall(self) -> Firewall:
        return Firewall(self.layout.tag, self.ifprefix)

    @property
    def hook_path(self) -> Path:
        return self.layout.rundir / "vz-net-hook"

    @property
    def stop_hook_path(self) -> Path:
        return self.layout.rundir / "vz-net-stop-hook"

    @property
    def traffic_dir(self) -> Path:
        """Where each VE's traffic totals live: <root>/traffic/<ctid>/ (see ``totals``)."""
        return self.layout.root / "traffic"

    @property
    def claims(self) -> Claims:
        return Claims(self.layout.rundir / "net-claims")

    @contextlib.contextmanager
    def _netlock(self) -> Iterator[None]:
        """All host changes of a root happen under this lock, so pool allocation, routes and
        firewall chains never race between VEs."""
        self.layout.lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lockdir / "network.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not flock_within(fd, LOCK_WAIT, interval=0.02):
                raise Busy("the network of this engine root is busy; try again")
            yield
        finally:
            os.close(fd)

    # --- what a VE has --------------------------------------------------------------------
    @staticmethod
    def addresses(conf: VEConfig) -> list[Address]:
        return stored_addresses(conf.get_list("IP_ADDRESS"))

    @staticmethod
    def forwards(conf: VEConfig) -> list[PortForward]:
        out = []
        for f in conf.get_list("PORTFWD"):
            with contextlib.suppress(InvalidInput):
                out.append(parse_forward(f))
        return out

    def _other_confs(self, ctid: int) -> Iterator[tuple[int, dict[str, str]]]:
        confdir = self.layout.confdir
        if not confdir.is_dir():
            return
        for p in confdir.glob("*.conf"):
            if p.stem.isdigit() and int(p.stem) != ctid:
                yield int(p.stem), read_kv(p)

    # --- Feature: check and apply ---------------------------------------------------------
    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        return {**self._check_routed(conf, params, creating), **self._check_netifs(conf, params, creating),
                **self._check_limits(params)}

    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        if not params:
            return
        with self._netlock():
            old = self.limits(conf)
            if "add" in params:
                self._apply_routed(conf, params, running, rb)
            if "netif_add" in params:
                self._apply_netifs(conf, params, running, rb)
            for key, value in params.get("limits", {}).items():
                conf.set(key, value)
            if running and (self.limits(conf) != old or {"add", "netif_add"} & set(params)):
                rb.add(f"restore the traffic limits of VE {conf.ctid}", lambda: self._undo_limits(conf, old))
                self._apply_limits(conf)
                self.engine._fail_point("set:after-limits")

    # --- Feature: life cycle --------------------------------------------------------------
    def lxc_config(self, conf: VEConfig) -> list[str]:
        self._write_hooks()
        if (conf.get("IP_ADDRESS") or conf.get("NETIF")) and "vzengine.netlink" not in sys.modules:
            # The engine writes the LXC config just before lxc-start: import pyroute2 (~0.2 s of
            # CPU) meanwhile, so after_start finds it loaded. Not a daemon thread: a process that
            # ends right away (vzctl create) waits for the import instead of cutting it off.
            threading.Thread(target=importlib.import_module, args=("vzengine.netlink",)).start()
        return [f"lxc.hook.start-host = {self.hook_path}",
                f"lxc.hook.stop = {self.stop_hook_path} {self.ifname(conf.ctid)}"]

    def _write_hooks(self) -> None:
        hooks.write_script(self.hook_path, hooks.start_host_hook(self.layout))
        hooks.write_script(self.stop_hook_path, hooks.stop_hook(self.traffic_dir, self._netns_handle(0).parent))

    def after_start(self, conf: VEConfig) -> None:
        addrs, pf, netifs = self.addresses(conf), self.forwards(conf), self.netifs(conf)
        if not addrs and not pf and not netifs:
            return
        from .. import checkpoint

        with self._netlock():
            nsfd = self._open_netns(conf.ctid)
            if nsfd is None:
                raise StateError(f"VE {conf.ctid} stopped while its network was being set up")
            try:
                if addrs or pf:
                    self._sync(conf.ctid, addrs, pf, nsfd, pf_changed=bool(pf), fresh=True)
                self._add_netifs(conf.ctid, netifs, nsfd)
                self._apply_limits(conf)
                if (addrs or pf) and checkpoint.is_resuming(self.engine, conf.ctid):
                    self._hold_netns(conf.ctid, nsfd)
            finally:
                os.close(nsfd)

    def restore_after_reboot(self, ctid: int, pid: int) -> None:
        """Set a VE's network up again in the namespace LXC made for it (the start-host hook)."""
        conf = self.engine.config(ctid)
        addrs, pf, netifs = self.addresses(conf), self.forwards(conf), self.netifs(conf)
        if not addrs and not pf and not netifs:
            return
        with self._netlock():
            try:
                nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise StateError(f"cannot open the network namespace of pid {pid}: {e.strerror}") from None
            try:
                if os.fstat(nsfd).st_ino == os.stat("/proc/self/ns/net").st_ino:
                    raise StateError(f"pid {pid} is in the host's network namespace, not in a VE's")
                if addrs or pf:
                    self._sync(ctid, addrs, pf, nsfd, pf_changed=bool(pf))
                self._add_netifs(ctid, netifs, nsfd)
                self._apply_limits(conf)
            finally:
                os.close(nsfd)

    def after_stop(self, conf: VEConfig) -> None:
        try:
            self._teardown(conf.ctid, self.addresses(conf), bool(self.forwards(conf)))
        finally:
            # Usually gone with the VE's namespace already; not when the engine held it (a resume).
            self._remove_netifs(self.netifs(conf))

    def destroy(self, conf: VEConfig) -> None:
        self._remove_netifs(self.netifs(conf))
        # Its DNAT chain can only exist once this root's chains were made (the stamp says so).
        self._teardown(conf.ctid, self.addresses(conf), bool(self.forwards(conf)) or self._stamp.exists())
        self.claims.release(conf.ctid)
        shutil.rmtree(self.traffic_dir / str(conf.ctid), ignore_errors=True)

    def purge(self) -> None:
        """Remove every veth, proxy entry, rule and chain of this root (forwarding stays on)."""
        ours = [n for n in os.listdir("/sys/class/net") if n.startswith(self.ifprefix)]
        if ours:
            from ..netlink import Netlink

            with Netlink() as host:
                for name in ours:
                    host.delete_link(name)
        self.firewall.purge([4, 6] if have_ipv6() else [4])
        self._release_all_netns()
        for p in (self.hook_path, self.stop_hook_path, self._stamp):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.traffic_dir, ignore_errors=True)
        self.claims.purge()

    def info(self, conf: VEConfig, running: bool) -> dict:
        out: dict = {}
        pf = self.forwards(conf)
        if pf:
            out["portfwd"] = [str(f) for f in pf]
        netifs = self.netifs(conf)
        if netifs:
            out["netifs"] = [n.to_dict() for n in netifs]
        out["rate_kbit"], out["conntrack_max"] = self.limits(conf)
        stats = self.counters(conf.ctid) if running else None
        out.update(zip(COUNTERS, stats or (0, 0, 0, 0), strict=True))
        out.update(self.usage(conf))  # since the VE was created: net_in_bytes ... net_out_packets
        if stats is not None:
            out["netif"] = self.ifname(conf.ctid)
        return out
