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
