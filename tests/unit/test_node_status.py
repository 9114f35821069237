"""What a node's status says (vzpanel/nodes/status.py): pure, no database. A down node's VEs show "unknown",
never stopped; use and room are read from the last pool report and the VEs' summed limits."""

from types import SimpleNamespace

from vzpanel.dashboard.builtin import ordered_states
from vzpanel.nodes.status import AddressPool, NodeStatus, shown_status

GiB = 1 << 30


def status(up=True, pool=None, pools=(), ram_committed=0):
    return NodeStatus(node=SimpleNamespace(name="n1"), up=up, last_seen_at=None, cpus=4, memory_bytes=8 * GiB,
                      ram_committed_bytes=ram_committed, pool=pool, address_pools=list(pools))


def test_a_down_nodes_ves_are_unknown_except_what_the_panel_itself_decides():
    for state in ("running", "stopped", "suspended", "rescue"):
        assert shown_status(state, True) == state
        assert shown_status(state, False) == "unknown"
    for state in ("creating", "missing", "destroyed"):  # the panel's own states: still true when it is down
        assert shown_status(state, False) == state


def test_disk_and_addresses_come_from_the_pool_report_and_the_pools():
    st = status(pool={"size_bytes": 20 * GiB, "free_bytes": 15 * GiB, "quota_enforced": True},
                pools=[AddressPool("a", "192.0.2.0/29", "public", 2, 5), AddressPool("b", "fd00::/64", "public", 1, 10)])
    assert (st.disk_pool_used_bytes, st.disk_size_bytes, st.disk_percent) == (5 * GiB, 20 * GiB, 25)
    assert (st.addresses_used, st.addresses_size, st.addresses_free) == (3, 15, 12)
    assert st.quota_problem is None and st.state == "up"


def test_without_a_pool_report_nothing_is_made_up():
    st = status(up=False)
    assert st.disk_pool_used_bytes is None and st.disk_percent is None and st.quota_problem is None
    assert st.state == "down" and not st.reconcile_late  # late only means something while the agent answers


def test_an_unenforced_quota_and_overcommitted_memory_are_said():
    st = status(pool={"size_bytes": 1, "free_bytes": 0, "quota_enforced": False, "quota_problem": "rescan failed"},
                ram_committed=10 * GiB)
    assert st.quota_problem == "rescan failed" and st.ram_left_bytes == -2 * GiB


def test_states_are_listed_in_a_fixed_order_without_zeros():
    counts = {"stopped": 2, "weird": 1, "running": 3, "unknown": 4, "missing": 0}
    assert ordered_states(counts) == [("running", 3), ("stopped", 2), ("unknown", 4), ("weird", 1)]
