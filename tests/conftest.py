"""Shared fixtures: a private engine root for the whole session, torn down even on failure."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT_REASON = "needs root, LXC and btrfs (run the test command from README.md as root)"


def have_root_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("lxc-start") is not None and shutil.which("btrfs") is not None


def pytest_collection_modifyitems(config, items):
    if have_root_tools():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vz_root():
    """Path of a private, initialised engine root (own pool, lxcpath, cgroups), purged at the end."""
    if not have_root_tools():
        pytest.skip(ROOT_REASON)
    from vzengine import Engine

    root = Path(tempfile.mkdtemp(prefix="vztest-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text('POOL_SIZE="8G"\n')
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
