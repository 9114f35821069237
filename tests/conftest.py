"""Shared fixtures: a private engine root for the whole session, torn down even on failure."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT_REASON = "needs root, LXC and btrfs (run the test command from README.md as root)"


# Every panel process the tests start hashes passwords fast (vzpanel/settings.py); this one switches below.
os.environ["VZPANEL_TESTS_FAST_PASSWORD_HASHER"] = "1"


def pytest_configure(config):
    """This process too: pytest-django has read the settings before this file ran."""
    try:
        from django.conf import settings
        from django.contrib.auth import hashers
    except ImportError:
        return
    fast = "django.contrib.auth.hashers.MD5PasswordHasher"
    if settings.configured and settings.PASSWORD_HASHERS[0] != fast:
        settings.PASSWORD_HASHERS = [fast, *settings.PASSWORD_HASHERS]
        hashers.get_hashers.cache_clear()
        hashers.get_hashers_by_algorithm.cache_clear()


def have_root_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("lxc-start") is not None and shutil.which("btrfs") is not None


def pytest_collection_modifyitems(config, items):
    if have_root_tools():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class NetPool:
    """A pair of test networks, 10.X.Y.0/24 and fdXX:YY::/64: ``ip(11)`` is "10.X.Y.11",
    ``ip6(0x11)`` "fdXX:YY::11"."""

    prefix: str  # "10.X.Y"
    prefix6: str  # "fdXX:YY::"

    @property
    def pool(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def pool6(self) -> str:
        return f"{self.prefix6}/64"

    def ip(self, n: int) -> str:
        return f"{self.prefix}.{n}"

    def ip6(self, n: int) -> str:
        return f"{self.prefix6}{n:x}"


def _host_networks() -> list:
    """Every network the host routes (any table) or has an address in, but the default routes."""
    out = []
    for cmd in (["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "-6", "route", "show", "table", "all"],
                ["ip", "-j", "addr"]):
        try:
            data = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout or "[]")
        except FileNotFoundError:  # no iproute2: no root tests either
            return out
        items = [a for link in data for a in link.get("addr_info", [])] if cmd[-1] == "addr" else data
        for item in items:
            dst = f"{item['local']}/{item['prefixlen']}" if "local" in item else item.get("dst", "default")
            if dst == "default":
                continue
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if net.prefixlen:
                out.append(net)
    return out


_picked: set[str] = set()


def free_test_net() -> NetPool:
    """A random 10.X.Y.0/24 (and fdXX:YY::/64) that nothing on the host routes or has an address
    in, different from the ones picked before in this run. 10.75-79 (the engine's default pool, the
    benchmarks) and 10.200-249 (the panel's tests) are never picked."""
    taken = _host_networks()
    rnd = random.SystemRandom()
    for _ in range(1000):
        # (y from 1: fdXX:0::11 is not how the engine writes that address)
        x, y = rnd.choice([x for x in range(16, 200) if not 75 <= x <= 79]), rnd.randrange(1, 256)
        net = NetPool(f"10.{x}.{y}", f"fd{x:02x}:{y:x}::")
        if net.prefix in _picked:
            continue
        nets = (ipaddress.ip_network(net.pool), ipaddress.ip_network(net.pool6))
        if not any(n.version == t.version and n.overlaps(t) for n in nets for t in taken):
            _picked.add(net.prefix)
            return net
    raise RuntimeError("no free 10.X.Y.0/24 for the tests on this host")


@pytest.fixture(scope="session")
def net() -> NetPool:
    """The pool of the session's engine root (``vz_root``): its own per run, never the default."""
    return free_test_net()


@pytest.fixture(scope="session")
def vz_root(net):
    """Path of a private, initialised engine root (own pool, lxcpath, cgroups), purged at the end."""
    if not have_root_tools():
        pytest.skip(ROOT_REASON)
    from vzengine import Engine

    root = Path(tempfile.mkdtemp(prefix="vztest-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'POOL_SIZE="8G"\nIP_POOL="{net.pool}"\nIP6_POOL="{net.pool6}"\n')
    eng = Engine(root)
    try:
        eng.ensure_ready()
        yield root
    finally:
        Engine(root).purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def engine(vz_root):
    from vzengine import Engine

    return Engine(vz_root, lock_wait=30)


_ctids = itertools.count(1000 + (os.getpid() % 1000) * 100)


@pytest.fixture
def new_ctid(engine):
    """Return a factory of fresh VE ids; every VE made with them is destroyed after the test."""
    made: list[int] = []

    def make() -> int:
        ctid = next(_ctids)
        made.append(ctid)
        return ctid

    yield make
    for ctid in made:
        if engine.exists(ctid):
            engine.destroy(ctid)


@pytest.fixture
def tiny_ve(engine, new_ctid):
    """A running VE of the tiny template."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"t{ctid}")
    engine.start(ctid, wait_boot=True)
    return ctid
