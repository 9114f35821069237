"""The node's list with usage (what the reconcile stores on each running VE) says what Engine.usage says, taken
from the pass Engine.list already makes over the VEs instead of a second read of every VE's cgroups."""

import pytest

from vzpanel.agent import ops

pytestmark = pytest.mark.root


def test_it_reports_a_running_ves_usage_as_engine_usage_does(engine, tiny_ve, new_ctid):
    stopped = new_ctid()
    engine.create(stopped, "tiny", hostname=f"t{stopped}")
    listed = {vi.ctid: vi for vi in engine.list()}
    usage, direct = ops.listed_usage(listed[tiny_ve]), engine.usage(tiny_ve)
    assert usage is not None and set(usage) == set(direct)
    for key in ("memory_limit_bytes", "nproc_limit", "disk_limit_bytes"):
        assert usage[key] == direct[key], key
    assert usage["running"] and usage["nproc"] >= 1 and usage["memory_bytes"] > 0
    assert any(key.startswith("net_") for key in usage)  # the network's totals, as Engine.usage has them
    assert not ops.listed_usage(listed[stopped])["running"]
