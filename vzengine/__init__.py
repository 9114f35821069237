"""vzengine: OpenVZ-style Virtual Environments on a stock kernel, with LXC underneath.

Usable without Django: ``Engine()`` works on the root in $VZ_ROOT (default /var/lib/vz).

The names below are loaded on first use (PEP 562), so that ``import vzengine.validate`` or
``vzengine.errors`` loads those small modules alone and not the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Engine": "engine", "VEInfo": "engine", "TemplateInfo": "templates",
    "AlreadyExists": "errors", "Busy": "errors", "CommandFailed": "errors", "InvalidInput": "errors",
    "NotFound": "errors", "StateError": "errors", "Unsupported": "errors", "VZError": "errors",
}

__all__ = [
    "AlreadyExists",
    "Busy",
    "CommandFailed",
    "Engine",
    "InvalidInput",
    "NotFound",
    "StateError",
    "TemplateInfo",
    "Unsupported",
    "VEInfo",
    "VZError",
]

if TYPE_CHECKING:
    from .engine import Engine, VEInfo
    from .errors import (
        AlreadyExists,
        Busy,
        CommandFailed,
        InvalidInput,
        NotFound,
        StateError,
        Unsupported,
        VZError,
    )
    from .templates import TemplateInfo


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule named as an attribute (``from vzengine import cgroups``)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
