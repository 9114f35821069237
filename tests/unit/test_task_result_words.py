"""A task's result in words (vzpanel.lib.words): what the task page shows customers instead of a Python dict."""

from vzpanel.lib.words import NOTHING, describe, label, size


def test_it_names_known_keys_in_words_and_keeps_acronyms_in_others():
    assert label("ctid") == "VE"
    assert label("ip_addresses") == "Addresses"
    assert label("kept_as_snapshot") == "Previous files kept as snapshot"
    assert label("ssh_port") == "SSH port"
    assert label("ipv6_gateway") == "IPv6 gateway"
    assert label("memory_bytes") == "Memory bytes"


def test_it_says_values_as_people_read_them():
    pairs = dict(describe({"ctid": 101, "status": "running", "ip_addresses": ["10.0.0.1", "fd77::1"],
                           "onboot": False, "verified": True, "nameservers": [], "kept_as_snapshot": None,
                           "size": 80_000_000, "cpu_seconds": 1.25, "ram_mb": 256}))
    assert pairs == {"VE": "101", "State": "running", "Addresses": "10.0.0.1, fd77::1",
                     "Starts with the node": "no", "Verified": "yes", "Name servers": NOTHING,
                     "Previous files kept as snapshot": NOTHING, "Size": "76.3 MB", "CPU seconds": "1.2 s",
                     "RAM MB": "256 MB"}


def test_a_nested_dict_becomes_a_nested_list_and_odd_results_stay_readable():
    pairs = describe({"extra": {"memory_bytes": 7_340_032, "limits": {"nproc": 128}}})
    (name, nested), = pairs
    assert name == "Details" and nested.nested
    assert dict(nested)["Memory bytes"] == "7.0 MB"
    assert dict(dict(nested)["Limits"]) == {"Processes": "128"}
    assert describe(None) == [] and describe({}) == []
    assert describe("done") == [("Result", "done")]
    assert describe([1, 2]) == [("Result", "1, 2")]
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    assert "item" in str(describe(deep))  # nesting stops at a few levels
    assert size(512) == "512 B" and size(1536) == "1.5 KB"
