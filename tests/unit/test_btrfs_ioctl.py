"""The packing and parsing of vzengine/btrfs.py's quota ioctls, against the layouts of linux/btrfs.h.

No root or btrfs needed: the buffers are built here the way the kernel fills them.
"""

from __future__ import annotations

import struct

import pytest

from vzengine import btrfs

MAX = (1 << 64) - 1


def filled(items: list[tuple[int, int, int, bytes]]) -> bytearray:
    """A TREE_SEARCH buffer as the kernel returns it: the key with nr_items set, then the items."""
    buf = btrfs.search_key(btrfs.QUOTA_TREE, (0, 0, 0), (0, 255, MAX))
    struct.pack_into("=I", buf, 64, len(items))
    pos = 104
    for objectid, typ, offset, data in items:
        struct.pack_into("=QQQII", buf, pos, 7, objectid, offset, typ, len(data))
        pos += 32
        buf[pos:pos + len(data)] = data
        pos += len(data)
    return buf


def info(rfer: int) -> bytes:
    return struct.pack("=QQQQQ", 9, rfer, rfer, rfer, rfer)


def limit(flags: int, max_rfer: int) -> bytes:
    return struct.pack("=QQQQQ", flags, max_rfer, 0, 0, 0)


def test_request_numbers_match_linux_btrfs_h():
    assert btrfs.IOC_QUOTA_CTL == 0xC0109428
    assert btrfs.IOC_QGROUP_CREATE == 0x4010942A
    assert btrfs.IOC_QGROUP_LIMIT == 0x8030942B
    assert btrfs.IOC_TREE_SEARCH == 0xD0009411


def test_a_search_key_carries_the_tree_the_key_range_and_the_buffer_size():
    buf = btrfs.search_key(8, (0, 242, 300), (0, 244, MAX))
    assert len(buf) == 4096
    tree, min_obj, max_obj, min_off, max_off, min_tr, max_tr, min_type, max_type, nr = \
        struct.unpack_from("=QQQQQQQIII", buf, 0)
    assert (tree, min_obj, max_obj, min_off, max_off) == (8, 0, 0, 300, MAX)
    assert (min_tr, max_tr, min_type, max_type, nr) == (0, MAX, 242, 244, 4096)


def test_it_reads_usage_and_limits_of_level_0_qgroups_only():
    buf = filled([
        (0, 242, 5, info(16384)),
        (0, 242, 257, info(3 << 20)),
        (0, 242, 258, info(0)),
        (0, 242, (1 << 48) | 101, info(1 << 30)),  # a level-1 qgroup: not a subvolume
        (0, 244, 257, limit(btrfs.QGROUP_LIMIT_MAX_RFER, 128 << 20)),
        (0, 244, 258, limit(0, 64 << 20)),  # the flag is off: no limit holds
    ])
    items = btrfs.parse_search(buf)
    assert [key for key, _ in items][:2] == [(0, 242, 5), (0, 242, 257)]
    assert btrfs.qgroups_from_items(items) == {5: (16384, None), 257: (3 << 20, 128 << 20), 258: (0, None)}


def test_an_empty_answer_has_no_items():
    assert btrfs.parse_search(filled([])) == []


def test_an_item_running_past_the_buffer_is_refused():
    buf = filled([(0, 242, 257, info(1))])
    struct.pack_into("=I", buf, 104 + 28, 5000)
    with pytest.raises(ValueError):
        btrfs.parse_search(buf)


def test_the_next_search_starts_just_after_the_last_key():
    assert btrfs.next_key((0, 242, 257)) == (0, 242, 258)
    assert btrfs.next_key((0, 242, MAX)) == (0, 243, 0)
    assert btrfs.next_key((0, 255, MAX)) == (1, 0, 0)
    assert btrfs.next_key((MAX, 255, MAX)) is None


def test_limit_args_set_the_referenced_limit_or_clear_it():
    assert struct.unpack("=QQQQQQ", btrfs.limit_args(128 << 20)) == (0, 1, 128 << 20, 0, 0, 0)
    assert struct.unpack("=QQQQQQ", btrfs.limit_args(None)) == (0, 1, MAX, 0, 0, 0)
    for bad in (0, -1, MAX):
        with pytest.raises(ValueError):
            btrfs.limit_args(bad)
