"""What a VE's network settings may say: addresses, port forwards, rates, conntrack caps, bridged
interfaces (NETIF). Pure parsing: no root, no VEs."""

import ipaddress

import pytest

from vzengine.errors import InvalidInput
from vzengine.firewall import PortForward
from vzengine.network import (
    NetIf,
    first_of,
    format_netifs,
    human_rate,
    parse_address,
    parse_conntrack,
    parse_forward,
    parse_ifname,
    parse_mac,
    parse_netifs,
    parse_rate,
    random_mac,
    stored_addresses,
)

# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("10.77.0.11", "10.77.0.11"),
    (" 10.77.0.11 ", "10.77.0.11"),
    ("10.77.0.11/32", "10.77.0.11"),
    ("fd77::11", "fd77::11"),
    ("fd77::11/128", "fd77::11"),
    ("2001:db8::1", "2001:db8::1"),
])
def test_it_takes_one_host_address_of_either_family(value, expected):
    assert parse_address(value) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("value, words", [
    ("10.77.0", "invalid IP address"),
    ("", "invalid IP address"),
    ("auto", "invalid IP address"),
    ("10.77.0.0/24", "give a single address"),
    ("fd77::/64", "give a single address"),
    ("0.0.0.0", "not usable as a VE address"),
    ("127.0.0.1", "not usable"),
    ("::1", "not usable"),
    ("224.0.0.1", "not usable"),
    ("169.254.1.1", "not usable"),
    ("fe80::1", "not usable"),
    ("255.255.255.255", "not usable"),
])
def test_it_refuses_what_is_not_a_usable_ve_address(value, words):
    with pytest.raises(InvalidInput, match=words):
        parse_address(value)


def test_a_stored_address_list_skips_what_does_not_parse():
    assert stored_addresses(["10.0.0.1", "junk", "fd00::1"]) == [ipaddress.ip_address("10.0.0.1"),
                                                                 ipaddress.ip_address("fd00::1")]


def test_port_forwards_go_to_the_first_address_of_each_family():
    addrs = stored_addresses(["fd00::1", "10.0.0.2", "10.0.0.1"])
    assert first_of(addrs, 4) == ipaddress.ip_address("10.0.0.2")
    assert first_of(addrs, 6) == ipaddress.ip_address("fd00::1")
    assert first_of(addrs[:1], 4) is None


# --- port forwards -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("tcp:2201:22", PortForward("tcp", 2201, 22)),
    ("UDP:53:5353", PortForward("udp", 53, 5353)),
    ("tcp:8080", PortForward("tcp", 8080, 8080)),
])
def test_a_port_forward_is_proto_hostport_veport(value, expected):
    assert parse_forward(value) == expected


@pytest.mark.parametrize("value", ["icmp:1:1", "tcp", "tcp:0:22", "tcp:65536:22", "tcp:22:x", "tcp:1:2:3", ""])
def test_a_bad_port_forward_is_refused(value):
    with pytest.raises(InvalidInput, match="invalid port forward"):
        parse_forward(value)


# --- rate and conntrack cap ----------------------------------------------------------------------


@pytest.mark.parametrize("value, kbit", [
    ("512", 512), ("512K", 512), ("512kbit", 512), ("10M", 10_000), ("10mbit/s", 10_000),
    ("1.5G", 1_500_000), ("100G", 100_000_000), (8, 8),
])
def test_a_rate_is_kbit_per_second(value, kbit):
    assert parse_rate(value) == kbit


@pytest.mark.parametrize("value", ["unlimited", "none", "MAX", "0"])
def test_a_rate_can_be_no_limit(value):
    assert parse_rate(value) is None


@pytest.mark.parametrize("value, words", [("7", "use 8 kbit/s to 100G"), ("101G", "100G"), ("fast", "e.g. 10M"),
                                          ("-5", "e.g. 10M")])
def test_a_rate_out_of_range_or_unreadable_is_refused_naming_the_option(value, words):
    with pytest.raises(InvalidInput, match=f"invalid RATE in vz.conf .*{words}"):
        parse_rate(value, "RATE in vz.conf")


@pytest.mark.parametrize("kbit, shown", [(None, "-"), (512, "512K"), (10_000, "10M"), (1_500_000, "1.5G"),
                                         (1_234, "1234K")])
def test_a_rate_is_shown_in_the_largest_unit_that_keeps_it_short(kbit, shown):
    assert human_rate(kbit) == shown


def test_a_conntrack_cap_is_a_whole_number_in_range_or_unlimited():
    assert parse_conntrack("4096") == 4096
    assert parse_conntrack("16") == 16
    assert parse_conntrack("unlimited") is None
    for bad in ("15", "10000001", "4k", "-1", ""):
        with pytest.raises(InvalidInput, match="use a whole number from 16 to 10000000"):
            parse_conntrack(bad)


# --- bridged interfaces (NETIF) ------------------------------------------------------------------

ETH1 = NetIf("eth1", "02:00:00:00:00:01", "vzabg65", "fe:00:00:00:00:01", "br0")
ETH2 = NetIf("eth2", "02:00:00:00:00:02", "vzabh65", "fe:00:00:00:00:02", "br1")


def test_netif_round_trips_through_its_stored_form():
    stored = format_netifs([ETH1, ETH2])
    assert stored == ("ifname=eth1,mac=02:00:00:00:00:01,host_ifname=vzabg65,host_mac=fe:00:00:00:00:01,bridge=br0;"
                      "ifname=eth2,mac=02:00:00:00:00:02,host_ifname=vzabh65,host_mac=fe:00:00:00:00:02,bridge=br1")
    assert parse_netifs(stored) == [ETH1, ETH2]


def test_netif_entries_that_do_not_parse_are_skipped():
    assert parse_netifs("") == []
    assert parse_netifs(f" ;ifname=eth9,mac=x;{ETH1}; ") == [ETH1]


@pytest.mark.parametrize("value", ["eth1", "lan.10", "a", "x" * 15, "br-int_0"])
def test_an_interface_name_is_a_letter_then_up_to_14_more(value):
    assert parse_ifname(value, "interface name") == value


@pytest.mark.parametrize("value", ["", "1eth", "x" * 16, "eth 1", "eth/1", "eth1;rm"])
def test_a_bad_interface_name_is_refused(value):
    with pytest.raises(InvalidInput, match="invalid interface name"):
        parse_ifname(value, "interface name")


def test_a_mac_is_six_hex_bytes_of_a_unicast_address():
    assert parse_mac("02-AA-bb-00-00-01") == "02:aa:bb:00:00:01"
    for bad, words in (("01:00:5e:00:00:01", "multicast"), ("00:00:00:00:00:00", "all zeros"),
                       ("02:00:00:00:00", "six hex bytes"), ("zz:00:00:00:00:00", "six hex bytes")):
        with pytest.raises(InvalidInput, match=words):
            parse_mac(bad)


def test_a_generated_mac_is_locally_administered_unicast_and_new():
    taken = {random_mac(0x02, set()) for _ in range(20)}
    mac = random_mac(0x02, taken)
    assert mac not in taken and mac.startswith("02:") and parse_mac(mac) == mac
    assert random_mac(0xFE, set()).startswith("fe:")
