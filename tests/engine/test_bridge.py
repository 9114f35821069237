"""Bridged VE interfaces (``--netif_add eth1,,,,BRIDGE``, OpenVZ's veth devices).

Every packet here stays on this machine: the "LAN" is a bridge this module makes, with a network
namespace it makes standing in for a host on that LAN, both with addresses of a free
10.X.Y.0/24 of their own (``free_test_net``); the host itself takes no part at layer 3.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import free_test_net
from tests.engine.conftest import root_tree
from tests.engine.test_network import BUSYBOX, host_objects, init_pid, wait_for
from vzengine import Engine, InvalidInput, Unsupported, criu

pytestmark = pytest.mark.root


def run(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def eng(vz_root):
    return Engine(vz_root, lock_wait=30)


@pytest.fixture(scope="module")
def lan():
    """A bridge of our own with a namespace of our own on it (a host of "the LAN", at ``o.ip(2)``):
    yields (bridge, pid of the namespace, the LAN's subnet)."""
    o = free_test_net()
    tag = os.getpid() % 100_000
    bridge, port = f"tbr{tag}", f"tbl{tag}"
    proc = subprocess.Popen(["unshare", "-n", "sleep", "900"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        run(f"ip link add {bridge} type bridge && ip link set {bridge} up && "
            f"ip link add {port} type veth peer name eth0 netns {proc.pid} && "
            f"ip link set {port} master {bridge} up")
        run(f"nsenter -t {proc.pid} -n sh -c 'ip link set lo up && ip link set eth0 up && "
            f"ip addr add {o.ip(2)}/24 dev eth0'")
        yield bridge, proc.pid, o
    finally:
        proc.kill()
        proc.wait()
        run(f"ip link del {port}", check=False)
        run(f"ip link del {bridge}", check=False)


def lan_pings(pid: int, addr: str) -> bool:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", BUSYBOX, "ping", "-c", "1", "-W", "2", addr],
                          capture_output=True).returncode == 0


def ve_mac(eng: Engine, ctid: int, name: str = "eth1") -> str | None:
    m = re.search(r"link/ether ([0-9a-f:]{17})", eng.exec(ctid, f"ip link show {name}").stdout)
    return m.group(1) if m else None


def netif(eng: Engine, ctid: int) -> dict:
    netifs = eng.status(ctid).extra.get("netifs", [])
    assert len(netifs) == 1, netifs
    return netifs[0]


def up_on_lan(eng: Engine, ctid: int, addr: str, pid: int, o) -> None:
    """Configure ``addr`` on the VE's eth1 (as the VE's own scripts or DHCP would), then ping both ways."""
    r = eng.exec(ctid, f"ip addr add {addr}/24 dev eth1")
    assert r.returncode == 0, r.stderr
    r = eng.exec(ctid, f"ping -c 1 -W 2 {o.ip(2)}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lan_pings(pid, addr)


def test_a_bridged_interface_reaches_the_lan_live_after_restart_and_reboot_and_goes_with_del_and_destroy(
        net, cli, eng, new_ctid, lan, vz_root):
    bridge, pid, o = lan
    ctid = new_ctid()
    eng.create(ctid, "tiny", ipadd=[net.ip(81)])  # routed eth0 and bridged eth1 side by side
    eng.start(ctid, wait_boot=True)
    r = cli("vzctl", "set", str(ctid), "--netif_add", f"eth1,,,,{bridge}", "--save")
    assert r.returncode == 0, r.stderr
    n = netif(eng, ctid)
    mac, host = n["mac"], n["host_ifname"]
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac) and host.startswith(f"vz{eng.layout.tag}") and len(host) <= 15
    conf = (vz_root / f"conf/{ctid}.conf").read_text()
    assert f"ifname=eth1,mac={mac},host_ifname={host},host_mac={n['host_mac']},bridge={bridge}" in conf
    assert os.path.basename(os.readlink(f"/sys/class/net/{host}/master")) == bridge
    assert ve_mac(eng, ctid) == mac
    up_on_lan(eng, ctid, o.ip(10), pid, o)
    assert eng.exec(ctid, f"ping -c 1 -W 1 {net.ip(1)}").returncode == 0  # the routed side is untouched

    eng.restart(ctid, wait_boot=True)
    assert ve_mac(eng, ctid) == mac  # the same MAC at every start: DHCP and ARP see the same VE
    up_on_lan(eng, ctid, o.ip(10), pid, o)

    first = init_pid(eng, ctid)
    eng.exec(ctid, "reboot")
    assert wait_for(lambda: eng.lxc.init_pid(ctid) not in (None, first), timeout=30), "the VE did not come back"
    eng.wait_booted(ctid, timeout=30)
    assert wait_for(lambda: ve_mac(eng, ctid) == mac, timeout=10), eng.exec(ctid, "ip link").stdout
    up_on_lan(eng, ctid, o.ip(10), pid, o)

    r = cli("vzctl", "set", str(ctid), "--netif_del", "eth1", "--save")
    assert r.returncode == 0, r.stderr
    assert ve_mac(eng, ctid) is None and not lan_pings(pid, o.ip(10))
    assert host_objects(host) == [] and "NETIF" not in eng.config(ctid).values

    r = cli("vzctl", "set", str(ctid), "--netif_add", "eth1", "--bridge", bridge, "--save")  # the short form
    assert r.returncode == 0, r.stderr
    again = netif(eng, ctid)
    assert again["mac"] != mac and ve_mac(eng, ctid) == again["mac"]
    eng.destroy(ctid)
    assert host_objects(again["host_ifname"]) == [] and host_objects(again["mac"]) == []


def test_bad_bridged_interfaces_are_refused_before_any_change(cli, eng, new_ctid, lan, vz_root):
    bridge, _pid, _o = lan
    a, b = new_ctid(), new_ctid()
    eng.create(a, "tiny", netif_add=[f"eth1,02:00:00:aa:00:01,,,{bridge}"])
    eng.create(b, "tiny")
    mine = netif(eng, a)
    assert mine["mac"] == "02:00:00:aa:00:01"
    for args, message in (
            (["--netif_add", "eth2,,,,tbr-none"], "bridge tbr-none does not exist on this host"),
            (["--netif_add", "eth2,,,,lo"], "lo is not a bridge"),
            (["--netif_add", "eth2"], "interface eth2 needs a bridge"),
            (["--netif_add", f"eth0,,,,{bridge}"], "eth0 is the VE's routed interface"),
            (["--netif_add", f"eth1,,,,{bridge}"], f"VE {a} already has an interface eth1"),
            (["--netif_add", f"eth2,,,,{bridge}", "--netif_add", f"eth2,,,,{bridge}"], "interface eth2 is given twice"),
            (["--netif_add", f"bad/name,,,,{bridge}"], "invalid interface name 'bad/name'"),
            (["--netif_add", f"eth2,02:00:00:zz:00:01,,,{bridge}"], "invalid MAC address '02:00:00:zz:00:01'"),
            (["--netif_add", f"eth2,01:00:5e:00:00:01,,,{bridge}"], "a multicast address"),
            (["--netif_add", f"eth2,,,00:00:00:00:00:00,{bridge}"], "invalid host MAC address"),
            (["--netif_add", f"eth2,,myveth,,{bridge}"], "the engine names the host side itself"),
            (["--netif_add", f"eth2,,,,{bridge},extra"], "use NAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE]"),
            (["--netif_add", f"eth2,02:00:00:aa:00:01,,,{bridge}"], "is given twice (or is in use by this VE)"),
            ([*(x for i in range(2, 10) for x in ("--netif_add", f"eth{i},,,,{bridge}"))],
             "a VE can have 8 bridged interfaces at most"),
            (["--netif_del", "eth7"], f"VE {a} has no bridged interface eth7"),
            (["--bridge", bridge], "give --netif_add too")):
        before = (root_tree(vz_root), (vz_root / f"conf/{a}.conf").read_text(), host_objects(f"vz{eng.layout.tag}"))
        r = cli("vzctl", "set", str(a), *args, "--save")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
        assert before == (root_tree(vz_root), (vz_root / f"conf/{a}.conf").read_text(),
                          host_objects(f"vz{eng.layout.tag}")), args
    r = cli("vzctl", "set", str(b), "--netif_add", f"eth1,02:00:00:aa:00:01,,,{bridge}", "--save")
    assert r.returncode == 2 and f"MAC address 02:00:00:aa:00:01 is in use by VE {a}" in r.stderr
    assert "NETIF" not in eng.config(b).values
    with pytest.raises(InvalidInput, match="a new one has nothing to remove"):
        eng.create(new_ctid(), "tiny", netif_del=["eth1"])

    # A clone, like a restore under another id, does not inherit MACs (nor addresses): it gets
    # a fresh one when it is given an interface.
    if not eng.storage.can_snapshot:
        return
    c, d = new_ctid(), new_ctid()
    eng.clone(a, c, linked=True, netif_add=[f"eth1,,,,{bridge}"])
    eng.clone(a, d, linked=True)
    theirs = netif(eng, c)
    assert theirs["bridge"] == bridge and theirs["ifname"] == "eth1"
    assert theirs["mac"] != mine["mac"] and theirs["host_mac"] != mine["host_mac"]
    assert theirs["host_ifname"] != mine["host_ifname"]
    assert "NETIF" not in eng.config(d).values


def test_a_ve_with_a_bridged_interface_suspends_and_resumes_with_its_lan_address(eng, new_ctid, lan):
    try:
        criu.require()
    except Unsupported as e:
        pytest.skip(str(e))
    bridge, pid, o = lan
    ctid = new_ctid()
    eng.create(ctid, "tiny", netif_add=[f"eth1,,,,{bridge}"])
    eng.start(ctid, wait_boot=True)
    mac = netif(eng, ctid)["mac"]
    up_on_lan(eng, ctid, o.ip(11), pid, o)
    eng.suspend(ctid)
    assert host_objects(netif(eng, ctid)["host_ifname"]) == []
    eng.resume(ctid)
    assert ve_mac(eng, ctid) == mac
    assert f"{o.ip(11)}/24" in eng.exec(ctid, "ip addr show dev eth1").stdout  # as the VE had set it
    assert lan_pings(pid, o.ip(11))
    assert os.path.basename(os.readlink(f"/sys/class/net/{netif(eng, ctid)['host_ifname']}/master")) == bridge
