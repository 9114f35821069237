"""VE networking (issue 3): routed veth pairs, addresses, NAT and port forwards via pyroute2.

Where things are (each module says more):

- addresses.py  what settings say, parsed and checked (pure): addresses, forwards, rates, NETIF
- pool.py       vz.conf's pools (NetSettings) and the claims of operations in progress
- naming.py     THE names of host-side interfaces (routed veth, bridged, ifb, parked links)
- hostcheck.py  conflicts with the host: addresses it has or routes, ports it serves, sysctls
- veth.py       routed mode: the VE's veth pair, routes, proxy ARP/NDP, port forwards
- bridge.py     bridged interfaces (--netif_add)
- fairness.py   --rate and --conntrack (a VE's share of the link and of conntrack)
- traffic.py    traffic totals over every run of a VE's network, the deleted-veth watcher's side
- netns.py      finding a VE's network namespace, holding a resumed VE's
- hooks.py      the two shell scripts LXC runs (after a reboot inside a VE, at its stop)
- parking.py    a VE's links taken out for a CRIU checkpoint and put back (checkpoint.py)
- feature.py    NetworkFeature, which puts them together for the engine
- The command line (vzctl's options, net-hook, vzlist's columns) is vzengine/cli/network.py.

Routed mode, like OpenVZ's venet. Each VE with an address gets a veth pair: ``eth0`` inside its
own network namespace (LXC gives it one with only ``lo``: ``lxc.net.0.type = empty``), and
``vz<tag><ctid>`` on the host. Inside, every address is a /32 or /128 on eth0 with a default
route through the host (``HOST_IP`` on-link, and fe80::1); the host side carries HOST_IP/32,
HOST_IP6/128 and fe80::1/64, so VEs reach the host at those addresses. The host routes to a VE
exactly the addresses assigned to it (a /32 or /128 route through its veth); there is no shared
layer 2, so one VE never sees another's traffic. Anti-spoofing is one rule per root and family
(raw table, ``-m rpfilter --invert -j DROP`` for packets from the root's veths): a VE may only
send from an address the host routes back to that same VE, so an address a VE's root adds on
its own neither sends nor receives anything. IPv4 rp_filter on the veth says the same again.

Where a VE's address lies in a subnet that is directly connected on a host interface (public
addresses from the host's LAN), the host answers ARP/NDP for it there (a proxy neighbour entry,
and proxy_ndp on for IPv6 on that interface).

Settings in the root's vz.conf (or $VZ_<NAME>): IP_POOL (IPv4 networks VE addresses come from,
separated by spaces), IP6_POOL, HOST_IP and HOST_IP6 (the host's address on every VE's link;
default the first address of the first pool), NAT (masquerade the private part of the pools
when they leave the host). Per VE (its conf): IP_ADDRESS, PORTFWD ("tcp:2201:22 ...") and NETIF.

Port forwards go from the host's addresses to the VE's first IPv4 address (iptables), and the
same ports of the host's IPv6 addresses to its first IPv6 address when it has one (ip6tables).
They answer on the host's real addresses only: 127.0.0.1:port and [::1]:port stay the host's own
(no route_localnet), so a forward never shadows a service the host keeps on its loopback.

The host is not a service to its VEs (firewall.py, VZ-T-IN): whatever a VE sends to any address
of the host itself is rejected, but replies to connections the host opened, pings, ICMPv6
neighbour discovery, and the ports vz.conf's HOST_PORTS opens on purpose ("udp:53 tcp:53" for a
resolver the host runs for its VEs; none by default: the engine serves its VEs nothing). A
server on the host bound to 0.0.0.0 or [::] (sshd, the panel) is therefore out of the VEs'
reach. Port forwards, VE to VE and VE to the outside are forwarded traffic and unaffected.

Fairness. ``--rate`` (RATE in the VE's conf, kbit/s; vz.conf RATE is the default for VEs without
one, none by default) limits the VE's traffic both ways: HTB on each of its host-side interfaces
for what it receives, and their ingress redirected to one ifb of its own (``vz<tag>z<ctid in base
36>``) for what it sends, shared by all its interfaces (tc.py). ``--conntrack`` (CONNTRACK_MAX,
vz.conf default 4096) caps the connections the VE opens through the host (a connlimit rule on
its routed veth, each address family on its own), so one VE's flood cannot fill the host's
connection-tracking table; beyond it new connections are rejected. Both are applied at start, after
a reboot inside the VE, and live by ``vzctl set``.

Bridged mode (``--netif_add eth1,,,,br0``, OpenVZ's veth devices), for layer 2: a second veth
pair per interface, ``eth1`` (any name but eth0 and lo) inside with a MAC generated when it is
added (02:..., locally administered; kept in NETIF, so DHCP and ARP see the same VE at every
start), and ``vz<tag><letter><ctid in base 36>`` on the host (MAC fe:..., so it never becomes the
bridge's own MAC), a port of an existing bridge. The engine brings eth1 up without addresses:
the VE configures it itself (``ip addr add``, DHCP), and the engine neither routes nor filters
it, so a bridged interface has no anti-spoofing: the VE can use any address or MAC on the LAN.
What it sends to the host is rejected like the routed side's only where br_netfilter passes
bridged frames to iptables (bridge-nf-call-iptables = 1); otherwise the host answers a bridged
VE as it answers any machine on that LAN (the engine does not load br_netfilter: it would send
every bridge of the host through iptables). Its conntrack entries are not capped.
Up to MAX_NETIFS per VE; created at start (after eth0), after a reboot inside the VE (the same
hook) and live by ``vzctl set``; gone with the VE's namespace, and deleted by the engine on
stop, destroy and purge (their names start with the root's prefix). A clone or a restore under
another id gets no NETIF (like IP_ADDRESS): give it ``--netif_add`` for interfaces of its own.
Its traffic is not counted in the totals below.

Addresses are applied after start (by the engine, in ``after_start``) and after a reboot inside
the VE: LXC then restarts the VE in a new network namespace without asking the engine, so the
VE's LXC config carries an ``lxc.hook.start-host`` hook, a shell script that exits at once when
the engine itself is starting the VE (about 1 ms) and otherwise calls ``vzctl net-hook``, which
sets the network up before the VE's init runs (in the background instead when another engine
operation, a backup say, holds the VE: the hook never waits for it).

All host changes of a root happen under one lock (<root>/locks/network.lock), so address
allocation from the pool, routes and firewall chains never race between VEs.

Each root knows only its own VEs' addresses, and several roots may share a pool (the default
one, say). So before anything changes, an address is also checked against the host itself
(``host_use``): one the host has on an interface of its own, or routes by a /32 or /128 route to
an interface that is not this VE's veth (another root's VE, or any other tool's), is refused
("10.77.0.11 is already in use on this host (routed to vzab12c101)"); ``--ipadd auto`` skips
those, and a start refuses them too (an address another root took while this VE was stopped).
A stopped VE of another root has no route, so its addresses cannot be seen: give roots on one
host pools of their own.

Traffic totals: the veth's counters start at zero with every veth (each start, a reboot inside
the VE, a resume), so each VE also has <root>/traffic/<ctid>/, where the runs that ended are
kept and ``usage`` adds them to the current one (net_in_bytes ... net_out_packets; see
``totals``). The VE's LXC config carries an ``lxc.hook.stop`` shell script that LXC runs while
it still holds the VE's network namespace, so it reads the veth's final counts; the engine
saves them too before it deletes a veth itself, and holds the namespace of a VE CRIU restored
(whose monitor keeps no handle on it) until they are read.
"""


from .addresses import (
    CONNTRACK_RANGE,
    RATE_MAX_KBIT,
    UNLIMITED,
    Address,
    NetIf,
    first_of,
    format_netifs,
    host_iface,
    host_net,
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
from .feature import LOCK_WAIT, NetworkFeature
from .hostcheck import RTN_NAMES, host_use, is_bridge
from .naming import (
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
from .pool import CLAIM_SECONDS, NET_DEFAULTS, Claims, NetSettings
from .traffic import COUNTERS, TOTALS, VETH_STATS
from .veth import GATEWAY6, VE_IFNAME

__all__ = [
    "CLAIM_SECONDS", "CONNTRACK_RANGE", "COUNTERS", "GATEWAY6", "LOCK_WAIT", "MAX_NETIFS", "NETIF_SLOTS",
    "NET_DEFAULTS", "PARK_SLOTS", "RATE_MAX_KBIT", "RTN_NAMES", "TOTALS", "UNLIMITED", "VETH_STATS", "VE_IFNAME",
    "Address", "Claims", "NetIf", "NetSettings", "NetworkFeature", "base36", "ctid_of_ifname", "first_of",
    "format_netifs", "host_iface", "host_net", "host_use", "human_rate", "ifb_name", "ifname", "ifprefix",
    "is_bridge", "netif_host_name", "park_name", "parse_address", "parse_conntrack", "parse_forward",
    "parse_ifname", "parse_mac", "parse_netifs", "parse_rate", "random_mac", "stored_addresses",
]
