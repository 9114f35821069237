"""Resource limits: no VE can starve its neighbours or take the host down; every limit changes live.

Real VEs and real cgroups: a fork bomb, a memory hog, a disk filler and busy loops run inside
tiny VEs, and the tests read what the kernel did from the VE's cgroup files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import _ctids
from vzengine import Engine, InvalidInput, Unsupported, cgroups, lxcfs
from vzengine.resources import ResourcesFeature, pool_block_devices

pytestmark = pytest.mark.root

MiB = 1 << 20


def cg(engine: Engine, ctid: int, controller: str, name: str) -> str:
    value = cgroups.read(controller, engine.layout.cgroup_dir(ctid), name)
    assert value is not None, f"no {controller}/{name} for VE {ctid}"
    return value


def feature(engine: Engine) -> ResourcesFeature:
    return next(f for f in engine.features if isinstance(f, ResourcesFeature))


def spawn(engine: Engine, ctid: int, script: str, name: str) -> None:
    """Start ``script`` in the background inside the VE, detached from lxc-attach."""
    engine.exec(ctid, f"cat > /root/{name}.sh", input=script)
    r = engine.exec(ctid, f"setsid sh /root/{name}.sh </dev/null >/dev/null 2>&1 &")
    assert r.returncode == 0, r.stderr


def cpu_ns(engine: Engine, ctid: int) -> int:
    """CPU time the VE has used, in ns, straight from its cgroup."""
    if cgroups.version("cpuacct") == 1:
        return int(cg(engine, ctid, "cpuacct", "cpuacct.usage"))
    return cgroups.flat_keyed(cg(engine, ctid, "cpu", "cpu.stat"))["usage_usec"] * 1000


def mem_total_kb(engine: Engine, ctid: int) -> int:
    line = engine.exec(ctid, "head -1 /proc/meminfo").stdout
    assert line.startswith("MemTotal:"), line
    return int(line.split()[1])


def cpu_share(engine: Engine, ctids: list[int], seconds: float) -> list[float]:
    """CPUs' worth of time each VE used over ``seconds`` of wall time."""
    t0, c0 = time.monotonic(), [cpu_ns(engine, c) for c in ctids]
    time.sleep(seconds)
    t1, c1 = time.monotonic(), [cpu_ns(engine, c) for c in ctids]
    return [(b - a) / 1e9 / (t1 - t0) for a, b in zip(c0, c1, strict=True)]


BUSY_LOOP = "while [ ! -e /tmp/stop-busy ]; do :; done\n"  # '[' is built in: no fork per turn


@pytest.fixture(autouse=True)
def _kill_new_ves_first(engine, new_ctid):
    """Kill the VEs a test started before they are destroyed: a clean shutdown takes seconds
    (and a fork bomb could stretch it), and every test here ends with its VEs of no more use."""
    before = set(engine.ctids())
    yield
    for ctid in set(engine.ctids()) - before:
        if engine.is_running(ctid):
            with contextlib.suppress(Exception):
                engine.stop(ctid, fast=True)


# --- limits at start ----------------------------------------------------------------------------

def test_limits_given_at_create_are_in_the_ves_cgroup_when_it_starts(engine, new_ctid, cli):
    ctid = new_ctid()
    engine.create(ctid, "tiny", ram="128M", swap="64M", cpus="1", cpuunits="2000", cpulimit="50",
                  cpumask="0", numproc="100", diskspace="200M", iolimit="10M", iopslimit="300", ioprio="6")
    conf = (engine.layout.conf(ctid)).read_text()
    for line in ('RAM="134217728"', 'SWAP="67108864"', 'CPULIMIT="50"', 'NUMPROC="100"', 'IOWEIGHT="500"'):
        assert line in conf
    lxc_conf = engine.lxc.config_path(ctid).read_text()
    assert "lxc.cgroup.memory.limit_in_bytes = 134217728" in lxc_conf or "lxc.cgroup2.memory.max = 134217728" in lxc_conf
    engine.start(ctid, wait_boot=True)
    if cgroups.version("memory") == 1:
        assert cg(engine, ctid, "memory", "memory.limit_in_bytes") == str(128 * MiB)
        if cgroups.swap_accounting():
            assert cg(engine, ctid, "memory", "memory.memsw.limit_in_bytes") == str(192 * MiB)
        assert cg(engine, ctid, "cpu", "cpu.shares") == "2048"
        assert cg(engine, ctid, "cpu", "cpu.cfs_quota_us") == "50000"
        dev = pool_block_devices(engine)[0]
        assert cg(engine, ctid, "blkio", "blkio.throttle.write_bps_device") == f"{dev} {10 * MiB}"
        assert cg(engine, ctid, "blkio", "blkio.throttle.read_iops_device") == f"{dev} 300"
    else:
        assert cg(engine, ctid, "memory", "memory.max") == str(128 * MiB)
        assert cg(engine, ctid, "cpu", "cpu.max") == "50000 100000"
    assert cg(engine, ctid, "cpuset", "cpuset.cpus") == "0"
    assert cg(engine, ctid, "pids", "pids.max") == "100"
    assert engine.exec(ctid, "nproc").stdout.strip() == "1"  # pinned to one CPU

    usage = engine.usage(ctid)
    assert usage["disk_limit_bytes"] == 200 * MiB and 0 < usage["disk_bytes"] < 200 * MiB
    assert usage["nproc"] >= 1 and usage["memory_bytes"] > 0 and usage["cpu_seconds"] > 0

    r = cli("vzlist", "-o", "ctid,status,numproc,ram,diskspace,cpu", str(ctid))
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["CTID", "STATUS", "NPROC", "RAM", "DISKSPACE", "CPU"]
    cells = row.split()
    assert cells[0] == str(ctid) and cells[1] == "running" and int(cells[2]) >= 1
    assert cells[3].endswith("/128M") and cells[4].endswith("/200M") and cells[5].endswith("s")

    r = cli("vzctl", "ubc", str(ctid))
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[-6]: ln.split()[-5:] for ln in r.stdout.splitlines()[1:] if not ln.startswith("#")}
    assert rows["numproc"][2:4] == ["100", "100"]
    assert rows["physpages"][2:4] == [str(128 * MiB // 4096)] * 2
    assert rows["diskspace"][2] == str(200 * 1024)
    assert rows["kmemsize"][2:] == ["n/a", "n/a", "n/a"]  # counted, but not limited apart by the kernel
    for resource in ("numfile", "numtcpsock", "tcpsndbuf", "privvmpages"):
        assert rows[resource] == ["n/a"] * 5


# --- processes ---------------------------------------------------------------------------------

FORK_BOMB = "b() { while [ ! -e /tmp/stop-bomb ]; do b & done; }\nb\n"


def test_a_fork_bomb_stops_at_numproc_and_the_ve_and_host_stay_usable(engine, tiny_ve):
    engine.set(tiny_ve, numproc="48")
    spawn(engine, tiny_ve, FORK_BOMB, "bomb")
    peak, host_fork = 0, []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak = max(peak, int(cg(engine, tiny_ve, "pids", "pids.current")))
        t0 = time.monotonic()
        subprocess.run(["true"], check=True)  # the host can still fork at once
        host_fork.append(time.monotonic() - t0)
        time.sleep(0.05)
    assert peak <= 48
    failcnt = cgroups.flat_keyed(cg(engine, tiny_ve, "pids", "pids.events"))["max"]
    assert failcnt > 0, "the bomb never reached the limit"
    assert max(host_fork) < 1.0, host_fork
    # Stop it from outside: the VE's own root is full, so even lxc-attach could not get in.
    (engine.layout.private(tiny_ve) / "tmp/stop-bomb").touch()
    deadline = time.monotonic() + 20
    while int(cg(engine, tiny_ve, "pids", "pids.current")) > 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.exec(tiny_ve, "echo still here").stdout.strip() == "still here"
    assert engine.usage(tiny_ve)["nproc_failcnt"] == failcnt


# --- memory ------------------------------------------------------------------------------------

def test_a_memory_hog_is_killed_inside_its_ve_only_and_failcnt_counts_it(engine, tiny_ve):
    # With some swap allowed the RAM limit is what the hog hits first, and the kernel counts
    # that in failcnt (it no longer counts hits of the RAM+swap limit: see RESOURCES.md).
    engine.set(tiny_ve, ram="64M", swap="32M")
    host_sentinel = subprocess.Popen(["sleep", "60"])
    try:
        init_before = engine.lxc.init_pid(tiny_ve)
        before = engine.usage(tiny_ve)
        r = engine.exec(tiny_ve, "dd if=/dev/zero of=/dev/null bs=200M count=1")
        assert r.returncode == 137, (r.returncode, r.stderr)  # SIGKILL from the OOM killer
        after = engine.usage(tiny_ve)
        assert after["oom_kills"] > (before["oom_kills"] or 0)
        assert after["memory_failcnt"] > (before["memory_failcnt"] or 0)
        assert host_sentinel.poll() is None  # nothing outside was killed
        assert engine.lxc.init_pid(tiny_ve) == init_before  # nor the VE's init
        assert engine.exec(tiny_ve, "echo alive").stdout.strip() == "alive"
        ubc = {r["resource"]: r for r in feature(engine).beancounters(tiny_ve)}
        assert ubc["oomguarpages"]["failcnt"] == after["oom_kills"]
        assert ubc["physpages"]["failcnt"] == after["memory_failcnt"]
        assert ubc["physpages"]["maxheld"] <= 64 * MiB // 4096
    finally:
        host_sentinel.kill()
        host_sentinel.wait()


def test_changing_ram_of_a_running_ve_takes_effect_without_restart(engine, tiny_ve):
    init = engine.lxc.init_pid(tiny_ve)
    engine.set(tiny_ve, ram="256M", swap="0")
    assert mem_total_kb(engine, tiny_ve) == 256 * 1024  # lxcfs: the VE's limit, not the host's RAM
    hog = "dd if=/dev/zero of=/dev/null bs=150M count=1"
    assert engine.exec(tiny_ve, hog).returncode == 0
    engine.set(tiny_ve, ram="96M", save=False)  # live only
    assert mem_total_kb(engine, tiny_ve) == 96 * 1024
    assert engine.exec(tiny_ve, hog).returncode == 137
    assert engine.lxc.init_pid(tiny_ve) == init
    assert f'RAM="{256 * MiB}"' in engine.layout.conf(tiny_ve).read_text()


def test_lowering_ram_below_what_the_ve_holds_is_refused_and_rolled_back(engine, tiny_ve):
    engine.set(tiny_ve, ram="256M", swap="0", numproc="200", save=True)
    spawn(engine, tiny_ve, "(head -c 40000000 /dev/zero; sleep 30) | tail -c 40000000 >/dev/null\n", "hold")
    deadline = time.monotonic() + 10
    while engine.usage(tiny_ve)["memory_anon_bytes"] < 38_000_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    conf_before = engine.layout.conf(tiny_ve).read_text()
    files = [(c, f) for c, f in (("memory", "memory.limit_in_bytes"), ("memory", "memory.memsw.limit_in_bytes"),
                                 ("memory", "memory.max"), ("memory", "memory.swap.max"), ("pids", "pids.max"))
             if cgroups.has_file(c, f, engine.layout.cgroup_dir(tiny_ve))]
    live = {f: cg(engine, tiny_ve, c, f) for c, f in files}
    # swap 300M makes RAM+swap grow, so on cgroup v1 it is written first; then the RAM limit
    # fails and that earlier write must be undone.
    with pytest.raises(InvalidInput, match=r"could not reclaim|cannot be reclaimed"):
        engine.set(tiny_ve, ram="16M", swap="300M", numproc="300", save=True)
    assert engine.layout.conf(tiny_ve).read_text() == conf_before
    assert {f: cg(engine, tiny_ve, c, f) for c, f in files} == live


@pytest.mark.slow
def test_free_inside_shows_the_ram_limit(engine, new_ctid):
    """procps' free reads /proc/meminfo, which lxcfs gives each VE from its own cgroup."""
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv", ram="300M", cpus="1")
    engine.start(ctid, wait_boot=True)
    mem = next(ln for ln in engine.exec(ctid, "free -m").stdout.splitlines() if ln.startswith("Mem:"))
    assert mem.split()[1] == "300", mem
    assert engine.exec(ctid, "grep -c ^processor /proc/cpuinfo").stdout.strip() == "1"
    ve_uptime = float(engine.exec(ctid, "cat /proc/uptime").stdout.split()[0])
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert ve_uptime < host_uptime and ve_uptime < 120


def test_lxcfs_serves_the_ve_and_is_not_stopped_while_a_ve_uses_it(engine, tiny_ve):
    assert lxcfs.is_alive()
    assert "fuse.lxcfs" in Path(f"/proc/{engine.lxc.init_pid(tiny_ve)}/mountinfo").read_text()
    assert lxcfs.stop(engine.layout) in ("in use", "not ours")
    assert lxcfs.is_alive()
    assert engine.exec(tiny_ve, "head -1 /proc/meminfo").returncode == 0


# --- CPU ---------------------------------------------------------------------------------------

def test_cpulimit_50_keeps_a_busy_loop_near_half_a_cpu(engine, tiny_ve):
    engine.set(tiny_ve, cpulimit="50")
    spawn(engine, tiny_ve, BUSY_LOOP, "busy")
    try:
        time.sleep(0.5)
        (share,) = cpu_share(engine, [tiny_ve], 4.0)
        assert 0.3 <= share <= 0.7, share
        assert engine.usage(tiny_ve)["cpu_throttled"] > 0
        engine.set(tiny_ve, cpulimit="0")  # lifted live
        quota = cg(engine, tiny_ve, "cpu", "cpu.cfs_quota_us" if cgroups.version("cpu") == 1 else "cpu.max")
        assert quota in ("-1", "max 100000")
    finally:
        engine.exec(tiny_ve, "touch /tmp/stop-busy")


def test_cpuunits_share_a_cpu_in_proportion(engine, new_ctid):
    light, heavy = new_ctid(), new_ctid()
    cpu = str(cgroups.online_cpus()[-1])
    for ctid, units in ((light, "1000"), (heavy, "3000")):
        engine.create(ctid, "tiny", cpuunits=units, cpumask=cpu)
        engine.start(ctid, wait_boot=True)
        spawn(engine, ctid, BUSY_LOOP, "busy")
    try:
        time.sleep(0.5)
        a, b = cpu_share(engine, [light, heavy], 3.0)
        assert a > 0.05 and 1.8 <= b / a <= 5.0, (a, b)  # 3 expected
        assert a + b <= 1.1  # both pinned to the same CPU
    finally:
        for ctid in (light, heavy):
            engine.exec(ctid, "touch /tmp/stop-busy")


# --- disk --------------------------------------------------------------------------------------

def test_disk_quota_fails_writes_inside_and_grows_and_shrinks_live(engine, tiny_ve, vz_root):
    engine.set(tiny_ve, diskspace="20M")
    r = engine.exec(tiny_ve, "dd if=/dev/zero of=/root/fill bs=1M count=40 conv=fsync")
    assert r.returncode != 0
    assert "quota exceeded" in r.stderr.lower() or "no space" in r.stderr.lower(), r.stderr
    # Outside the VE the pool still takes writes.
    outside = vz_root / "pool" / f"outside-{tiny_ve}"
    try:
        with open(outside, "wb") as f:
            f.write(b"\0" * 40 * MiB)
            os.fsync(f.fileno())
    finally:
        outside.unlink(missing_ok=True)
    engine.set(tiny_ve, diskspace="100M")  # grow live
    r = engine.exec(tiny_ve, "rm -f /root/fill; dd if=/dev/zero of=/root/fill bs=1M count=40 conv=fsync")
    assert r.returncode == 0, r.stderr
    with pytest.raises(InvalidInput, match="already uses"):
        engine.set(tiny_ve, diskspace="30M")  # below the 40M it holds
    engine.exec(tiny_ve, "rm /root/fill")
    engine.set(tiny_ve, diskspace="30M")  # shrink live, now that it fits
    assert engine.usage(tiny_ve)["disk_limit_bytes"] == 30 * MiB


def test_disk_quota_on_a_directory_pool_is_a_clear_error(tmp_path):
    root = tmp_path / "dirroot"
    root.mkdir()
    (root / "vz.conf").write_text('STORAGE="dir"\n')
    eng = Engine(root)
    with pytest.raises(Unsupported, match="disk quota is not available with STORAGE=dir"):
        eng.create(next(_ctids), "tiny", diskspace="1G")
    assert not list(root.glob("conf/*.conf"))


def test_diskinodes_say_that_btrfs_cannot_enforce_them(cli, tiny_ve):
    r = cli("vzctl", "set", str(tiny_ve), "--diskinodes", "200000", "--save")
    assert r.returncode == 8 and "--diskinodes cannot be enforced: btrfs" in r.stderr


def test_iolimit_throttles_direct_io(engine, tiny_ve):
    engine.set(tiny_ve, iolimit="2M")
    write = "dd if=/dev/zero of=/root/io bs=1M count=6 oflag=direct"
    t0 = time.monotonic()
    assert engine.exec(tiny_ve, write).returncode == 0
    limited = time.monotonic() - t0
    assert limited >= 1.8, limited  # 6M at 2M/s, after a first burst
    engine.set(tiny_ve, iolimit="0")
    t0 = time.monotonic()
    assert engine.exec(tiny_ve, write).returncode == 0
    assert time.monotonic() - t0 < limited / 2
    assert engine.usage(tiny_ve)["io_write_bytes"] >= 12 * MiB


# --- accounting --------------------------------------------------------------------------------

def test_usage_of_all_ves_is_read_in_one_pass(engine, tiny_ve, new_ctid):
    stopped = new_ctid()
    engine.create(stopped, "tiny")
    everything = feature(engine).usage_all()
    assert {tiny_ve, stopped} <= set(everything)
    running = everything[tiny_ve]
    assert running["running"] and running["nproc"] >= 1 and running["memory_bytes"] > 0
    assert running["cpu_seconds"] > 0 and running["disk_bytes"] > 0
    assert not everything[stopped]["running"] and everything[stopped]["nproc"] is None
    info = engine.status(tiny_ve).extra["resources"]
    assert info["usage"]["nproc"] >= 1 and "RAM" in info["limits"]


# --- bad input ---------------------------------------------------------------------------------

BAD = [
    (["--ram", "1K"], 2, "invalid --ram '1K': must be at least 16M"),
    (["--ram", "12Q"], 2, "invalid --ram '12Q'"),
    (["--ram", "100000T"], 2, "must be at most"),
    (["--swap", "1G", "--ram", "unlimited"], 2, "--swap needs a --ram limit"),
    (["--cpus", "999"], 2, "invalid --cpus 999"),
    (["--cpulimit", "100000"], 2, "invalid --cpulimit 100000"),
    (["--cpuunits", "7"], 2, "invalid --cpuunits 7"),
    (["--cpumask", "999"], 2, "CPU 999 is not online"),
    (["--numproc", "-3"], 2, "invalid --numproc"),
    (["--numproc", "8"], 2, "is below that"),
    (["--diskspace", "1M"], 2, "already uses"),
    (["--iolimit", "fast"], 2, "invalid --iolimit"),
    (["--ioprio", "9"], 2, "invalid --ioprio 9"),
    (["--quotaugidlimit", "100"], 8, "not available"),
]


@pytest.fixture(scope="module")
def busy_ve(vz_root):
    """A running tiny VE with a dozen processes, for the bad-input cases (one VE for all)."""
    eng = Engine(vz_root, lock_wait=30)
    ctid = next(_ctids)
    eng.create(ctid, "tiny", ram="128M", numproc="100")
    eng.start(ctid, wait_boot=True)
    eng.exec(ctid, "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do setsid sleep 600 </dev/null >/dev/null 2>&1 & done")
    # 2 MiB of its own: under simple quotas a VE is charged only for what it writes, not its template.
    eng.exec(ctid, "dd if=/dev/zero of=/root/own bs=1M count=2 conv=fsync status=none")
    yield ctid
    with contextlib.suppress(Exception):
        eng.stop(ctid, fast=True)
    eng.destroy(ctid)


@pytest.mark.parametrize(("args", "code", "message"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_limits_get_one_line_and_change_nothing(cli, engine, busy_ve, args, code, message):
    conf_before = engine.layout.conf(busy_ve).read_text()
    live = [cg(engine, busy_ve, "pids", "pids.max"), engine.usage(busy_ve)["memory_limit_bytes"]]
    r = cli("vzctl", "set", str(busy_ve), *args, "--save")
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: ") and message in lines[0], r.stderr
    assert engine.layout.conf(busy_ve).read_text() == conf_before
    assert [cg(engine, busy_ve, "pids", "pids.max"), engine.usage(busy_ve)["memory_limit_bytes"]] == live


# --- the mapping table -------------------------------------------------------------------------

def test_one_table_maps_each_limit_to_cgroup_v1_and_v2_files():
    """The v2 column cannot run on these v1 hosts; this pins what it writes."""
    from vzengine.resources import KNOBS, Context

    lim = {"RAM": 512 * MiB, "SWAP": 256 * MiB, "CPUS": 2, "CPUUNITS": 2000, "CPULIMIT": 50,
           "CPUMASK": "0-1", "NUMPROC": 256, "IOLIMIT": 20 * MiB, "IOPSLIMIT": 400, "IOWEIGHT": 500}
    ctx = Context(engine=None, _devices=["7:3"])
    got = {1: {}, 2: {}}
    for knob in KNOBS:
        for ver in (1, 2):
            if knob.file(ver):
                got[ver][knob.file(ver)] = knob.values(ver, lim, ctx)
    assert got[1] == {
        "memory.limit_in_bytes": [str(512 * MiB)], "memory.memsw.limit_in_bytes": [str(768 * MiB)],
        "cpu.shares": ["2048"], "cpu.cfs_period_us": ["100000"], "cpu.cfs_quota_us": ["50000"],
        "cpuset.cpus": ["0-1"], "pids.max": ["256"],
        "blkio.throttle.read_bps_device": [f"7:3 {20 * MiB}"], "blkio.throttle.write_bps_device": [f"7:3 {20 * MiB}"],
        "blkio.throttle.read_iops_device": ["7:3 400"], "blkio.throttle.write_iops_device": ["7:3 400"],
        "blkio.bfq.weight": ["500"],
    }
    assert got[2] == {
        "memory.max": [str(512 * MiB)], "memory.swap.max": [str(256 * MiB)], "cpu.weight": ["200"],
        "cpu.max": ["50000 100000"], "cpuset.cpus": ["0-1"], "pids.max": ["256"],
        "io.max": [f"7:3 rbps={20 * MiB} wbps={20 * MiB} riops=400 wiops=400"], "io.bfq.weight": ["500"],
    }
    unlimited = dict.fromkeys(lim)
    assert KNOBS[0].values(1, unlimited, ctx) == ["-1"] and KNOBS[0].values(2, unlimited, ctx) == ["max"]
    assert next(k for k in KNOBS if k.v2 == "cpu.max").values(2, unlimited, ctx) == ["max 100000"]
