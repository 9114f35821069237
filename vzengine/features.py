"""Engine features: the parts that add VE parameters, LXC config lines and host objects.

Each feature lives in its own module and is found through ``FEATURES`` (imported lazily, like
Healthchecks' transports), so networking, resources and snapshots grow without touching the
core lifecycle. The engine calls every feature at fixed points of a VE's life:

    check(conf, params, creating)   parse and validate the parameters it owns; change nothing
    apply(conf, params, running, rb) store them in ``conf`` and, if the VE runs, apply them live;
                                    register an undo on ``rb`` for every host change
    before_start(conf)              just before lxc-start (host services the VE needs, e.g. lxcfs)
    lxc_config(conf)                more lxc.* lines for the VE's LXC config
    after_start(conf)               init runs: set up host objects (an error stops the VE again)
    after_stop(conf)                the VE is down: release what after_start made
    destroy(conf)                   the VE is being removed: remove everything of it
    purge()                         the whole root is being removed
    info(conf, running)             extra fields for VEInfo.extra
    usage(conf)                     what the VE uses now, for Engine.usage (flat, JSON-safe)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine
    from .rollback import Rollback
    from .veconf import VEConfig

# name -> "module:Class", in the order the engine calls them. The one list of features: a feature's
# command line, if it has one, is the module vzengine.cli.<name> (found by vzctl and vzlist).
FEATURES: dict[str, str] = {
    "network": "vzengine.network:NetworkFeature",
    "resources": "vzengine.resources:ResourcesFeature",
    "checkpoint": "vzengine.images:CheckpointFeature",
    "snapshots": "vzengine.snapshots:SnapshotsFeature",
    "vefirewall": "vzengine.vefirewall:VEFirewallFeature",
    "rescue": "vzengine.rescue:RescueFeature",
}


class Feature:
    name = ""
    params: tuple[str, ...] = ()  # keyword arguments of Engine.create / Engine.set it owns

    def __init__(self, engine: Engine):
        self.engine = engine

    def check(self, conf: VEConfig, params: dict, creating: bool) -> dict:
        return params

    def apply(self, conf: VEConfig, params: dict, running: bool, rb: Rollback) -> None:
        pass

    def before_start(self, conf: VEConfig) -> None:
        pass

    def lxc_config(self, conf: VEConfig) -> list[str]:
        return []

    def after_start(self, conf: VEConfig) -> None:
        pass

    def after_stop(self, conf: VEConfig) -> None:
        pass

    def destroy(self, conf: VEConfig) -> None:
        pass

    def purge(self) -> None:
        pass

    def info(self, conf: VEConfig, running: bool) -> dict:
        return {}

    def usage(self, conf: VEConfig) -> dict:
        return {}


def load_features(engine: Engine) -> list[Feature]:
    out = []
    for path in FEATURES.values():
        module, _, cls = path.partition(":")
        out.append(getattr(importlib.import_module(module), cls)(engine))
    return out
