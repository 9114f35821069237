"""A create that fails half-way leaves nothing behind: no VE root, config or LXC container."""

import pytest

from tests.engine.conftest import root_tree
from vzengine import CommandFailed

pytestmark = pytest.mark.root


@pytest.mark.parametrize("point", ["create:before-config", "create:after-config"])
def test_a_failed_create_is_rolled_back(engine, new_ctid, vz_root, monkeypatch, point):
    ctid = new_ctid()
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_FAIL_AT", point)
    with pytest.raises(CommandFailed, match="injected failure"):
        engine.create(ctid, "tiny")
    assert root_tree(vz_root) == before
    assert not engine.exists(ctid)
    monkeypatch.delenv("VZ_FAIL_AT")
    engine.create(ctid, "tiny")  # the id is free again
    assert engine.exists(ctid)


def test_a_start_that_fails_says_why_and_leaves_the_ve_stopped(engine, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    init = vz_root / f"pool/private/{ctid}/sbin/init"
    init.unlink()
    with pytest.raises(CommandFailed, match=f"VE {ctid} failed to start"):
        engine.start(ctid)
    assert not engine.is_running(ctid)
