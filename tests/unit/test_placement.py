"""The placement policy: where a new VE goes among the nodes."""

import pytest

from vzpanel.nodes.placement import Candidate, PlacementError, pick

T = frozenset({"tiny", "debian-12"})


def node(name, memory=8192, committed=0, **kw):
    return Candidate(name, memory, committed, templates=kw.pop("templates", T), free_addresses=kw.pop("free", 5),
                     **kw)


def test_the_least_loaded_by_memory_share_wins_not_the_most_free_memory():
    big = node("big", memory=65536, committed=49152)   # 75 % used, 16 GB free
    small = node("small", memory=8192, committed=2048)  # 25 % used, 6 GB free
    assert pick([big, small], "tiny", 1024).name == "small"


def test_maintenance_down_missing_template_full_memory_and_no_address_are_skipped():
    best = node("zz", committed=4096)
    others = [node("a", maintenance=True), node("b", alive=False), node("c", templates=frozenset({"x"})),
              node("d", memory=1024, committed=768), node("e", free=0)]
    assert pick([*others, best], "tiny", 512, addresses=1).name == "zz"
    assert pick([node("e", free=0)], "tiny", 512, addresses=0).name == "e"  # no address asked: fine


def test_ties_go_to_the_name():
    assert pick([node("b"), node("a")], "tiny", 512).name == "a"


def test_an_admin_names_a_node_but_it_must_still_fit():
    nodes = [node("a"), node("b", committed=4096)]
    assert pick(nodes, "tiny", 512, named="b").name == "b"
    with pytest.raises(PlacementError, match="no node 'c'"):
        pick(nodes, "tiny", 512, named="c")
    with pytest.raises(PlacementError, match="b: in maintenance"):
        pick([node("b", maintenance=True)], "tiny", 512, named="b")


def test_when_nothing_fits_the_error_says_why_for_each_node():
    with pytest.raises(PlacementError, match=r"a: agent down; b: no template gentoo"):
        pick([node("b"), node("a", alive=False)], "gentoo", 512)
    with pytest.raises(PlacementError, match="no nodes"):
        pick([], "tiny", 512)


def test_disk_and_ipv6_are_checked_and_what_a_node_does_not_report_or_pool_is_not_held_against_it():
    from vzpanel.nodes.placement import Need

    need = Need("tiny", 512, addresses=1, addresses_v6=1, disk_mb=5120)
    small_disk = Candidate("a", 8192, templates=T, free_addresses=5, free_v6=5, disk_free_mb=4096)
    no_v6 = Candidate("b", 8192, templates=T, free_addresses=5, free_v6=0)
    unreported = Candidate("c", 8192, committed_mb=4096, templates=T, free_addresses=None, free_v6=None)
    assert pick([small_disk, no_v6, unreported], need).name == "c"
    with pytest.raises(PlacementError, match="a: not enough disk; b: no free IPv6 address"):
        pick([small_disk, no_v6], need)


def test_a_down_agent_refuses_only_when_asked_to():
    from vzpanel.nodes.placement import Need

    down = Candidate("only", 8192, alive=False, templates=T)
    assert pick([down], Need("tiny", 512, need_alive=False)).name == "only"
    with pytest.raises(PlacementError, match="only: agent down") as refused:
        pick([down], Need("tiny", 512))
    assert refused.value.why == "only: agent down"


def test_naming_a_node_that_does_not_exist_is_its_own_error():
    from vzpanel.nodes.placement import NoSuchNode

    with pytest.raises(NoSuchNode):
        pick([node("a")], "tiny", 512, named="b")
