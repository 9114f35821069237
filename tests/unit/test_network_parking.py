"""The routes a checkpoint's marker keeps for a VE's bridged interfaces: written as `ip route add`
arguments, read back strictly (the marker's content came from inside the VE). Pure: no root."""

import ipaddress

import pytest

from vzengine.netlink import StaticRoute
from vzengine.network.parking import Detached, Parked, bridged, parse_route_args, route_args

net = ipaddress.ip_network


@pytest.mark.parametrize("route, family, args", [
    (StaticRoute(net("0.0.0.0/0"), ipaddress.ip_address("10.0.0.1"), True, None), "-4",
     ["-4", "default", "via", "10.0.0.1", "onlink"]),
    (StaticRoute(net("172.16.0.0/16"), ipaddress.ip_address("192.168.5.1"), False, 7), "-4",
     ["-4", "172.16.0.0/16", "via", "192.168.5.1", "metric", "7"]),
    (StaticRoute(net("::/0"), ipaddress.ip_address("fe80::1"), False, 1024), "-6",
     ["-6", "default", "via", "fe80::1", "metric", "1024"]),
    (StaticRoute(net("10.9.0.0/24"), None, False, None), "-4", ["-4", "10.9.0.0/24"]),
])
def test_a_kept_route_reads_back_as_it_was(route, family, args):
    assert route_args(family, route) == args
    dst, kwargs = parse_route_args(args)
    assert dst == route.dst
    assert kwargs.get("gateway") == route.gateway and kwargs.get("onlink", False) == route.onlink
    assert kwargs.get("metric") == route.metric


def test_routes_kept_by_earlier_engines_read_back_too():
    assert parse_route_args(["-4", "10.0.0.5", "via", "10.0.0.1"]) == (net("10.0.0.5/32"),
                                                                       {"gateway": ipaddress.ip_address("10.0.0.1")})


@pytest.mark.parametrize("args", [
    [], ["-4"], ["-5", "default"], ["-4", "default", "via"], ["-4", "default", "via", "evil; rm -rf /"],
    ["-4", "fd00::/64"], ["-6", "default", "via", "10.0.0.1"], ["-4", "default", "metric", "x"],
    ["-4", "default", "table", "5"], ["-4", "default", 7], "-4 default", None,
])
def test_anything_else_in_the_marker_is_ignored(args):
    assert parse_route_args(args) is None


def test_only_the_bridged_interfaces_go_into_the_marker():
    st = Detached(parked=[Parked("eth0", "vzab12cdk2t", ["10.0.0.5/32"]),
                          Parked("eth1", "vzab12cdl2t", ["192.168.1.5/24"], [["-4", "default", "via", "192.168.1.1"]])])
    netif = "ifname=eth1,mac=02:00:00:00:00:01,host_ifname=vzab12cdg2t,host_mac=fe:00:00:00:00:01,bridge=br0"
    assert bridged(netif, st) == [{"name": "eth1", "addrs": ["192.168.1.5/24"],
                                   "routes": [["-4", "default", "via", "192.168.1.1"]]}]
    assert bridged("", st) == []
