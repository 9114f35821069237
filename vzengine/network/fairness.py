"""Fairness: a VE's rate (``--rate``, RATE) and its cap on tracked connections (``--conntrack``, CONNTRACK_MAX).

The rate is HTB on each of the VE's host-side interfaces for what it receives, and their
ingress redirected to one ifb of its own (naming.ifb_name) for what it sends (tc.py). The
conntrack cap is a connlimit rule on its routed veth, each address family on its own
(firewall.py). Both are applied at start, after a reboot inside the VE, and live by ``vzctl set``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from ..firewall import have_ipv6
from .addresses import parse_conntrack, parse_rate
from .hostcheck import link_exists
from .naming import ifb_name

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from ..firewall import Firewall
    from ..layout import Layout
    from ..veconf import VEConfig
    from .addresses import Address, NetIf
    from .pool import NetSettings

Limits = tuple[int | None, int | None]  # (rate in kbit/s, conntrack cap); None: unlimited


class LimitsMixin:
    """NetworkFeature's traffic limits (it provides ``settings``, ``ifname``, ``netifs``, ``firewall``,
    ``_netlock``, ``_stamp``, ``_ensure_host``)."""

    if TYPE_CHECKING:  # what NetworkFeature provides
        @property
        def layout(self) -> Layout: ...
        @property
        def firewall(self) -> Firewall: ...
        @property
        def _stamp(self) -> Path: ...
        def settings(self) -> NetSettings: ...
        def ifname(self, ctid: int) -> str: ...
        def netifs(self, conf: VEConfig) -> list[NetIf]: ...
        def addresses(self, conf: VEConfig) -> list[Address]: ...
        def _netlock(self) -> AbstractContextManager[None]: ...
        def _ensure_host(self, versions: set[int]) -> None: ...

    def limits(self, conf: VEConfig) -> Limits:
        """(rate in kbit/s, conntrack cap) of a VE: its own (RATE, CONNTRACK_MAX), else vz.conf's."""
        s = self.settings()
        rate, cap = s.rate, s.conntrack_max
        with contextlib.suppress(InvalidInput):  # a hand-edited value that does not parse: the default
            if conf.get("RATE"):
                rate = parse_rate(conf.get("RATE"))
        with contextlib.suppress(InvalidInput):
            if conf.get("CONNTRACK_MAX"):
                cap = parse_conntrack(conf.get("CONNTRACK_MAX"))
        return rate, cap

    def ifb_name(self, ctid: int) -> str:
        return ifb_name(self.layout.tag, ctid)

    @staticmethod
    def _check_limits(params: dict) -> dict:
        """--rate and --conntrack: a value, unlimited, or default (vz.conf's)."""
        out = {}
        for key, conf_key, parse in (("rate", "RATE", parse_rate), ("conntrack", "CONNTRACK_MAX", parse_conntrack)):
            value = params.get(key)
            if value is None:
                continue
            s = str(value).strip()
            if s.lower() == "default":
                out[conf_key] = ""
                continue
            n = parse(s)
            out[conf_key] = "unlimited" if n is None else str(n)
        return {"limits": out} if out else {}

    def _undo_limits(self, conf: VEConfig, old: Limits) -> None:
        with self._netlock():
            self._apply_limits(conf, old)

    def _apply_limits(self, conf: VEConfig, limits: Limits | None = None) -> None:
        """Make a running VE's rate and conntrack cap what its config says (network lock held)."""
        from .. import tc

        ctid = conf.ctid
        rate, cap = limits or self.limits(conf)
        routed = self.ifname(ctid)
        devs = [d for d in (routed, *(n.host_ifname for n in self.netifs(conf))) if link_exists(d)]
        ifb = self.ifb_name(ctid)
        if rate is None or not devs:
            if link_exists(ifb):  # it goes with every limit the engine set
                for d in devs:
                    tc.clear_ingress(d)
                    tc.clear_egress(d)
                self._delete_ifb(ctid)
        else:
            from ..netlink import Netlink

            with Netlink() as host:
                host.add_ifb(ifb)
            tc.set_egress_rate(ifb, rate)
            for d in devs:
                tc.set_egress_rate(d, rate)
                tc.redirect_ingress(d, ifb)
        if routed in devs:
            for family in ([4, 6] if have_ipv6() else [4]):
                if not self.firewall.set_conntrack_cap(ctid, routed, cap, family):
                    self._stamp.unlink(missing_ok=True)  # the root's chains are gone: make them again
                    self._ensure_host({a.version for a in self.addresses(conf)} or {4})
                    self.firewall.set_conntrack_cap(ctid, routed, cap, family)
        elif self._stamp.exists():
            for family in ([4, 6] if have_ipv6() else [4]):
                self.firewall.set_conntrack_cap(ctid, routed, None, family, running=False)

    def _delete_ifb(self, ctid: int) -> None:
        ifb = self.ifb_name(ctid)
        if link_exists(ifb):
            from ..netlink import Netlink

            with Netlink() as host:
                host.delete_link(ifb)
