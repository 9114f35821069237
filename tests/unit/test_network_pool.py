"""Where VE addresses come from: vz.conf's pools, the host's address on the VEs' links, and the
arithmetic of picking free addresses. Pure: no root, no VEs."""

import ipaddress

import pytest

from vzengine.errors import InvalidInput
from vzengine.network import NET_DEFAULTS, NetSettings

ip = ipaddress.ip_address


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    """$VZ_<NAME> overrides vz.conf: none of the runner's may leak in."""
    for key in NET_DEFAULTS:
        monkeypatch.delenv(f"VZ_{key}", raising=False)


def test_the_defaults_give_a_private_pool_of_each_family_with_the_host_first():
    s = NetSettings.load({})
    assert [str(n) for n in s.pools4] == ["10.77.0.0/24"] and [str(n) for n in s.pools6] == ["fd77::/64"]
    assert s.host_ip == ip("10.77.0.1") and s.host_ip6 == ip("fd77::1")
    assert s.nat and s.host_ports == () and s.rate is None and s.conntrack_max == 4096


def test_vz_conf_sets_pools_host_addresses_ports_and_limits():
    s = NetSettings.load({"IP_POOL": "10.1.0.0/28, 10.2.0.0/30", "IP6_POOL": "", "HOST_IP": "10.9.9.9",
                          "NAT": "no", "HOST_PORTS": "udp:53 tcp:53", "RATE": "10M", "CONNTRACK_MAX": "unlimited"})
    assert [str(n) for n in s.pools4] == ["10.1.0.0/28", "10.2.0.0/30"]
    assert s.pools6 == (ipaddress.ip_network("fd77::/64"),)  # empty means the default
    assert s.host_ip == ip("10.9.9.9") and not s.nat
    assert s.host_ports == (("udp", 53), ("tcp", 53)) and s.rate == 10_000 and s.conntrack_max is None


def test_the_environment_overrides_vz_conf(monkeypatch):
    monkeypatch.setenv("VZ_IP_POOL", "10.5.0.0/24")
    assert NetSettings.load({"IP_POOL": "10.1.0.0/24"}).host_ip == ip("10.5.0.1")


@pytest.mark.parametrize("settings, words", [
    ({"IP_POOL": "10.1.0.0/33"}, "IP_POOL='10.1.0.0/33' in vz.conf: '10.1.0.0/33' is not a network"),
    ({"IP_POOL": "fd00::/64"}, "IP_POOL in vz.conf takes IPv4 networks"),
    ({"IP6_POOL": "10.0.0.0/8"}, "IP6_POOL in vz.conf takes IPv6 networks"),
    ({"HOST_IP": "gateway"}, "HOST_IP='gateway' in vz.conf is not an IP address"),
    ({"HOST_PORTS": "dns"}, "HOST_PORTS in vz.conf: 'dns' is not PROTO:PORT"),
    ({"RATE": "fast"}, "invalid RATE in vz.conf"),
    ({"CONNTRACK_MAX": "1"}, "invalid CONNTRACK_MAX in vz.conf"),
])
def test_a_bad_vz_conf_says_which_setting_is_wrong(settings, words):
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace("/", "/")):
        NetSettings.load(settings)


def test_an_assignable_address_is_inside_a_pool_and_not_the_hosts_nor_network_or_broadcast():
    s = NetSettings.load({"IP_POOL": "10.1.0.0/24"})
    s.check_assignable(ip("10.1.0.2"))
    s.check_assignable(ip("fd77::2"))
    for addr, words in (("10.2.0.2", r"outside the IP pool \(IP_POOL in vz.conf: 10.1.0.0/24\)"),
                        ("fd78::2", r"outside the IP pool \(IP6_POOL"),
                        ("10.1.0.1", "the host's own address"),
                        ("10.1.0.0", "network or broadcast address of 10.1.0.0/24"),
                        ("10.1.0.255", "network or broadcast address")):
        with pytest.raises(InvalidInput, match=words):
            s.check_assignable(ip(addr))


def test_free_addresses_come_lowest_first_skipping_the_taken_the_host_and_the_ends():
    s = NetSettings.load({"IP_POOL": "10.1.0.0/29 10.2.0.0/31"})
    assert s.free(4, set(), 3) == [ip("10.1.0.2"), ip("10.1.0.3"), ip("10.1.0.4")]
    assert s.free(4, {ip("10.1.0.3")}, 2) == [ip("10.1.0.2"), ip("10.1.0.4")]
    # a /29 gives .2 to .6 (not the network, the host's .1, nor the broadcast); a /31 both its addresses
    assert [str(a) for a in s.free(4, set(), 100)] == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6",
                                                       "10.2.0.0", "10.2.0.1"]


def test_an_ipv6_pool_keeps_its_last_address_and_is_not_walked_to_its_end():
    s = NetSettings.load({"IP6_POOL": "fd00::/126"})
    assert [str(a) for a in s.free(6, set(), 10)] == ["fd00::2", "fd00::3"]
    huge = NetSettings.load({"IP6_POOL": "fd00::/64"})
    assert len(huge.free(6, set(), 3)) == 3  # lazily: the pool's 2**64 addresses are never listed
    assert huge.describe(6) == "fd00::/64" and NetSettings.load({"IP_POOL": ","}).describe(4) == "none configured"


def test_a_full_pool_has_no_free_address():
    s = NetSettings.load({"IP_POOL": "10.1.0.0/30"})
    assert s.free(4, {ip("10.1.0.2")}, 1) == []
