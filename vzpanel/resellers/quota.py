"""The arithmetic of a reseller's quota, without Django: what each VE takes and what a change asks for.

A reseller's customers' live VEs take, each, one VE, the RAM and disk of their plan, and the addresses of their
plan (or the addresses they hold, when an admin gave them more). A change (a new VE, another plan for a
customer, new values of a plan, one more address) asks for the difference between the totals after and
before; it is refused when it asks for more of a resource than the quota has left. Asking for less is never
refused, also when the reseller is over its quota already (an admin lowered it): that only gets better.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# name -> (what it is called in a message, its unit)
RESOURCES = {
    "ves": ("VEs", ""),
    "ram_mb": ("RAM", "MB"),
    "disk_gb": ("disk", "GB"),
    "ipv4": ("IPv4 addresses", ""),
    "ipv6": ("IPv6 addresses", ""),
}


@dataclass(frozen=True)
class Amounts:
    """How much of each resource of a quota: a limit, a usage or what a change asks for."""

    ves: int = 0
    ram_mb: int = 0
    disk_gb: int = 0
    ipv4: int = 0
    ipv6: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def items(self):
        return [(name, getattr(self, name)) for name in RESOURCES]


@dataclass(frozen=True)
class PerVE:
    """What a plan gives each VE, as far as a quota counts it."""

    ram_mb: int = 0
    disk_gb: int = 0
    ipv4: int = 0
    ipv6: int = 0


def ve_amounts(per_ve: PerVE, held4: int = 0, held6: int = 0) -> Amounts:
    """Return what one live VE takes: its plan's RAM and disk, and its plan's addresses or the ones it holds,
    whichever is more (a VE may hold more than its plan when an admin added them)."""
    return Amounts(ves=1, ram_mb=per_ve.ram_mb, disk_gb=per_ve.disk_gb, ipv4=max(per_ve.ipv4, held4),
                   ipv6=max(per_ve.ipv6, held6))


def total(items) -> Amounts:
    """Return the sum of Amounts."""
    out = Amounts()
    for item in items:
        out = out + item
    return out


def amount(name: str, value: int) -> str:
    """Return value of resource name in words: "512 MB of RAM", "2 VEs"."""
    label, unit = RESOURCES[name]
    return f"{value} {unit} of {label}" if unit else f"{value} {label}"


@dataclass(frozen=True)
class Refusal:
    """One resource a change would take beyond the quota."""

    name: str
    limit: int
    used: int
    asked: int

    @property
    def message(self) -> str:
        unit = RESOURCES[self.name][1]
        unit = f" {unit}" if unit else ""
        free = max(self.limit - self.used, 0)
        return (f"The reseller quota allows {amount(self.name, self.limit)}: {self.used}{unit} in use and this "
                f"asks for {self.asked}{unit} more ({free}{unit} left).")


def refusals(limit: Amounts, used: Amounts, asked: Amounts) -> list[Refusal]:
    """Return the resources for which asked (more than nothing) does not fit beside used within limit."""
    out = []
    for name, more in asked.items():
        if more > 0 and getattr(used, name) + more > getattr(limit, name):
            out.append(Refusal(name, getattr(limit, name), getattr(used, name), more))
    return out


def too_big_for(limit: Amounts, per_ve: PerVE) -> list[str]:
    """Return why one VE of a plan could never fit the whole quota (empty: it could)."""
    one = ve_amounts(per_ve)
    return [f"One VE of this plan takes {amount(name, getattr(one, name))}; the whole reseller quota is "
            f"{amount(name, getattr(limit, name))}."
            for name in ("ram_mb", "disk_gb", "ipv4", "ipv6") if getattr(one, name) > getattr(limit, name)]
