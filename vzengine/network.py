"""VE networking (issue 3): routed veth pairs, addresses, NAT and port forwards via pyroute2."""

from __future__ import annotations

from .features import Feature


class NetworkFeature(Feature):
    name = "network"
