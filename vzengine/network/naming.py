"""The names of a VE's host-side interfaces: the one place they are computed.

Linux allows 15 characters. Every name of an engine root starts with ``vz<tag>`` (the root's
prefix: purge and the agent's veth watcher find the root's interfaces by it); the character
after the prefix tells the kinds apart, so no two ever collide:

- digits: the routed veth, ``vz<tag><ctid>`` (``ifname``);
- ``x``: the routed veth of a long id, ``vz<tag>x<ctid in base 36>``;
- ``g h i j u v w y``: bridged interfaces (``netif_host_name``, slots of NETIF_SLOTS);
- ``k`` to ``t``: links checkpoint.py parks on the host during a suspend (``park_name``);
- ``z``: the ifb that shapes what a VE sends (``ifb_name``).
"""

from __future__ import annotations

IFNAMSIZ = 15  # characters of an interface name, without the terminating NUL
MAX_NETIFS = 8
NETIF_SLOTS = "ghijuvwy"  # the letter after the prefix in a bridged host-side name
PARK_SLOTS = "klmnopqrst"  # the letter after the prefix in a parked link's name (checkpoint.py)
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    """``n`` in base 36 (lower case): the short form of a VE id in names."""
    digits = ""
    while n:
        n, r = divmod(n, 36)
        digits = _DIGITS[r] + digits
    return digits or "0"


def ifprefix(tag: str) -> str:
    """What every host-side interface of the engine root ``tag`` starts with."""
    return f"vz{tag}"


def ifname(tag: str, ctid: int) -> str:
    """The host-side veth of a VE: vz<tag><ctid>, at most 15 characters (long ids in base 36)."""
    name = f"{ifprefix(tag)}{ctid}"
    if len(name) <= IFNAMSIZ:
        return name
    return f"{ifprefix(tag)}x{base36(ctid)}"  # decimal names never contain an 'x'


def ctid_of_ifname(tag: str, name: str) -> int | None:
    """The VE whose routed veth is ``name`` (the inverse of ``ifname``); None for any other name."""
    prefix = ifprefix(tag)
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    try:
        ctid = int(rest[1:], 36) if rest.startswith("x") else int(rest) if rest.isdigit() else None
    except ValueError:
        return None
    return ctid if ctid is not None and ifname(tag, ctid) == name else None


def ifb_name(tag: str, ctid: int) -> str:
    """The ifb that shapes what a VE sends (``--rate``): vz<tag>z<ctid in base 36>."""
    return f"{ifprefix(tag)}z{base36(ctid)}"


def netif_host_name(tag: str, ctid: int, slot: int) -> str:
    """The host side of a VE's bridged interface: vz<tag><slot letter><ctid in base 36>."""
    return f"{ifprefix(tag)}{NETIF_SLOTS[slot]}{base36(ctid)}"


def park_name(tag: str, ctid: int, slot: int) -> str:
    """The name a VE's link has on the host while checkpoint.py dumps the VE: vz<tag><k..t><ctid in base 36>."""
    return f"{ifprefix(tag)}{PARK_SLOTS[slot]}{base36(ctid)}"
