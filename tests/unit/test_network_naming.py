"""The names of a VE's host-side interfaces: within Linux's 15 characters, under the root's prefix,
and never the same for two VEs or two kinds of interface. Pure: no root, no VEs."""

import pytest

from vzengine.network import (
    MAX_NETIFS,
    NETIF_SLOTS,
    PARK_SLOTS,
    base36,
    ctid_of_ifname,
    ifb_name,
    ifname,
    ifprefix,
    netif_host_name,
    park_name,
)
from vzengine.validate import CTID_MAX, CTID_MIN

TAG = "ab12cd"  # a root's tag: six hex digits of a hash of its path (Layout.tag)
CTIDS = (CTID_MIN, 101, 9999, 1234567, 12345678, CTID_MAX)


def every_name(tag, ctid):
    yield "routed", ifname(tag, ctid)
    yield "ifb", ifb_name(tag, ctid)
    for slot in range(MAX_NETIFS):
        yield f"bridged {slot}", netif_host_name(tag, ctid, slot)
    for slot in range(len(PARK_SLOTS)):
        yield f"parked {slot}", park_name(tag, ctid, slot)


def test_the_routed_veth_is_the_prefix_and_the_id_in_decimal_while_it_fits():
    assert ifname(TAG, 101) == "vzab12cd101"
    assert ifname(TAG, 1234567) == "vzab12cd1234567"  # 15 characters exactly


def test_a_long_id_goes_to_base_36_after_an_x():
    assert ifname(TAG, 12345678) == "vzab12cdx7clzi"
    assert base36(12345678) == "7clzi"
    assert base36(0) == "0" and base36(35) == "z" and base36(36) == "10"


@pytest.mark.parametrize("ctid", CTIDS)
def test_every_name_fits_linux_and_starts_with_the_roots_prefix(ctid):
    for kind, name in every_name(TAG, ctid):
        assert len(name) <= 15, (kind, name)
        assert name.startswith(ifprefix(TAG)) and ifprefix(TAG) == "vzab12cd", (kind, name)


def test_no_two_interfaces_share_a_name_across_ves_and_kinds():
    seen = {}
    for ctid in [*range(CTID_MIN, 500), *CTIDS[3:]]:
        for kind, name in every_name(TAG, ctid):
            assert name not in seen, f"{kind} of VE {ctid} and {seen[name]} are both {name}"
            seen[name] = f"{kind} of VE {ctid}"


def test_the_letters_after_the_prefix_tell_the_kinds_apart():
    letters = set(NETIF_SLOTS) | set(PARK_SLOTS) | {"x", "z"}
    assert len(letters) == len(NETIF_SLOTS) + len(PARK_SLOTS) + 2 and not letters & set("0123456789")


@pytest.mark.parametrize("ctid", CTIDS)
def test_the_ve_of_a_routed_veth_is_read_back_from_its_name(ctid):
    assert ctid_of_ifname(TAG, ifname(TAG, ctid)) == ctid


@pytest.mark.parametrize("name", ["vzab12cd", "vzab12cdz2t", "vzab12cdg2t", "vzab12cd0101", "vzab12ce101", "eth0",
                                  "vzab12cdx", "vzab12cdx2t", "vzab12cdx-1"])
def test_no_other_name_is_taken_for_a_routed_veth(name):
    assert ctid_of_ifname(TAG, name) is None
