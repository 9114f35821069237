"""Resource limits and accounting (issue 4): CPU, memory, processes, disk, I/O."""

from __future__ import annotations

from .features import Feature


class ResourcesFeature(Feature):
    name = "resources"
