"""vzengine: OpenVZ-style Virtual Environments on a stock kernel, with LXC underneath.

Usable without Django: ``Engine()`` works on the root in $VZ_ROOT (default /var/lib/vz).
"""

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
