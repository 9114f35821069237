"""A hostile root inside a VE gets nothing of the host's: the attacks are made for real from inside.

CRIU option injection through a mount point's name, host-side reads of a FIFO or an endless
file planted in the VE, symlinks pointing out of the VE, and a VE made without limits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from vzengine import StateError, cgroups, checkpoint, criu, rootfs

MiB = 1 << 20


@pytest.fixture
def host_dir():
    """A host directory the VE cannot see: marks of a successful attack, and victim files."""
    d = Path(tempfile.mkdtemp(prefix="vzhostile-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def lxcfs_in(engine, ctid: int) -> bool:
    pid = engine.lxc.init_pid(ctid)
    return pid is not None and "fuse.lxcfs" in Path(f"/proc/{pid}/mountinfo").read_text()


# --- 1. CRIU config injection -------------------------------------------------------------------

# The mount point the attack makes: its line breaks turn one `external mnt[...]` line of the CRIU
# config into an `action-script` line (CRIU runs those on the host as root) and a comment.
INJECT = """
cat > /root/evil.sh <<EOF
#!/bin/sh
echo "ran as \\$(id -u) on the host" >> {mark}
EOF
chmod 755 /root/evil.sh
P="$(printf '/tmp/a]:x\\naction-script %s\\n#' {script})"
mkdir -p "$(dirname "$P")" && touch "$P" && mount --bind /proc/meminfo "$P" && echo mounted
"""


@pytest.mark.root
@pytest.mark.slow
def test_it_refuses_a_suspend_when_a_mount_point_would_inject_criu_options(engine, cli, new_ctid, host_dir):
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv")
    engine.start(ctid, wait_boot=True)
    if not lxcfs_in(engine, ctid):
        pytest.skip("lxcfs does not serve this VE, so there is no external mount to name")
    mark = host_dir / "mark"
    script = engine.layout.private(ctid) / "root/evil.sh"
    r = engine.exec(ctid, INJECT.format(mark=mark, script=script))
    assert r.stdout.strip() == "mounted", r.stderr
    assert "action-script" in Path(f"/proc/{engine.lxc.init_pid(ctid)}/mountinfo").read_text()

    t0 = time.monotonic()
    with pytest.raises(StateError, match=r"cannot be suspended: .*lxcfs.*line break") as refused:
        engine.suspend(ctid)
    assert "\n" not in refused.value.message
    r = cli("vzctl", "suspend", str(ctid))
    assert r.returncode == 5 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot be suspended" in r.stderr
    assert time.monotonic() - t0 < 30
    assert not mark.exists(), mark.read_text()  # CRIU never ran the VE's script on the host
    assert engine.is_running(ctid) and not engine.is_suspended(ctid)
    assert not checkpoint.image_dir(engine, ctid).exists()
    for conf in engine.layout.rundir.glob(f"{ctid}.criu-*.conf"):
        assert "action-script" not in conf.read_text()
    assert engine.exec(ctid, "echo alive").stdout.strip() == "alive"

    # Without the hostile mount (and with a benign one of its own) the VE suspends and resumes.
    r = engine.exec(ctid, 'umount "$(printf \'/tmp/a]:x\\naction-script %s\\n#\' ' + str(script) + ')" && '
                    "touch /tmp/meminfo.copy && mount --bind /proc/meminfo /tmp/meminfo.copy && echo ok")
    assert r.stdout.strip() == "ok", r.stderr
    engine.suspend(ctid)
    assert engine.is_suspended(ctid) and not engine.is_running(ctid)
    engine.resume(ctid)
    assert engine.is_running(ctid)
    assert engine.exec(ctid, "head -1 /tmp/meminfo.copy").stdout.startswith("MemTotal:")
    assert not mark.exists()


@pytest.mark.parametrize("bad", ["/tmp/a\nb", "/tmp/a b", "/tmp/a]:x", "/tmp/#", '/tmp/"q"', "/tmp/\x01",
                                 "/tmp/é", "relative", "/tmp/../etc", "/tmp/a\tb", ""])
def test_criu_config_words_refuse_what_could_split_an_option(bad):
    with pytest.raises(criu.UnsafeName):
        criu.path_word(bad, "a mount point")


def test_criu_config_file_takes_only_known_options_one_word_each(tmp_path):
    path = tmp_path / "criu.conf"
    criu.write_config(path, [("external", "mnt[/proc/meminfo]:vz_proc_meminfo")])
    assert path.read_text() == "external mnt[/proc/meminfo]:vz_proc_meminfo\n"
    assert path.stat().st_mode & 0o777 == 0o600
    for option, value in (("action-script", "/tmp/x"), ("external", "mnt[/a]:b\naction-script /x"),
                          ("external", "mnt[/a b]:c"), ("external\naction-script", "/x")):
        with pytest.raises(criu.UnsafeName):
            criu.write_config(path, [(option, value)])


# --- 2. host-side reads and writes of the VE's files --------------------------------------------

def timed_cli(cli, *args: str, timeout: float = 30) -> tuple[object, float]:
    t0 = time.monotonic()
    r = cli("vzctl", *args, timeout=timeout)  # a hang would end in TimeoutExpired: a failure
    return r, time.monotonic() - t0


def one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: "), r.stderr
    return lines[0]


@pytest.mark.root
def test_a_fifo_at_etc_hosts_fails_set_hostname_at_once_and_frees_the_lock(engine, cli, tiny_ve):
    hosts = engine.layout.private(tiny_ve) / "etc/hosts"
    assert engine.exec(tiny_ve, "rm /etc/hosts && mkfifo /etc/hosts && echo ok").stdout.strip() == "ok"
    conf_before = engine.layout.conf(tiny_ve).read_text()
    r, seconds = timed_cli(cli, "set", str(tiny_ve), "--hostname", "fifo1", "--save")
    assert r.returncode != 0 and seconds < 5, (r.returncode, seconds)
    assert "/etc/hosts in the VE is a FIFO, not a regular file" in one_line(r)
    assert engine.layout.conf(tiny_ve).read_text() == conf_before
    assert hosts.is_fifo()
    # The lock was let go: the next operation on the VE runs (and, with a real file, succeeds).
    assert engine.exec(tiny_ve, "rm /etc/hosts && echo '127.0.0.1 localhost' > /etc/hosts && echo ok").stdout
    r, seconds = timed_cli(cli, "set", str(tiny_ve), "--hostname", "good1", "--save")
    assert r.returncode == 0 and seconds < 10, r.stderr
    assert "127.0.1.1\tgood1" in hosts.read_text()
    assert engine.exec(tiny_ve, "hostname").stdout.strip() == "good1"


ENDLESS = [
    ("a symlink to /dev/zero", "ln -sf /dev/zero /etc/shadow", "is a symlink"),
    ("a huge sparse file", "cp /etc/shadow /root/s && cat /root/s > /etc/shadow && truncate -s 64G /etc/shadow",
     "is larger than 4 MiB"),
    ("a FIFO", "rm /etc/shadow && mkfifo /etc/shadow", "is a FIFO"),
]


@pytest.mark.root
@pytest.mark.parametrize(("how", "plant", "message"), ENDLESS, ids=[e[0] for e in ENDLESS])
def test_an_endless_etc_shadow_fails_a_password_change_at_once(engine, cli, tiny_ve, how, plant, message):
    r = engine.exec(tiny_ve, plant + " && echo ok")
    assert r.stdout.strip() == "ok", r.stderr
    r, seconds = timed_cli(cli, "set", str(tiny_ve), "--userpasswd", "root:Secret-123", "--save")
    assert r.returncode != 0 and seconds < 5, (r.returncode, seconds, r.stderr)
    assert f"/etc/shadow in the VE {message}" in one_line(r)
    # The lock is free again, and the VE's own tools still work.
    r, _ = timed_cli(cli, "set", str(tiny_ve), "--hostname", f"after{tiny_ve}", "--save")
    assert r.returncode == 0, r.stderr


@pytest.mark.root
def test_symlinks_out_of_the_ve_are_never_followed_to_host_files(engine, cli, tiny_ve, host_dir):
    victim = host_dir / "victim"
    victim.write_text("host data\n")
    os.chmod(victim, 0o644)
    private = engine.layout.private(tiny_ve)
    # /etc/hostname pointing at a host file: the write replaces the link, the host file stays.
    engine.exec(tiny_ve, f"ln -sf {victim} /etc/hostname")
    engine.set(tiny_ve, hostname="link1")
    assert victim.read_text() == "host data\n"
    assert not (private / "etc/hostname").is_symlink()
    assert (private / "etc/hostname").read_text() == "link1\n"
    # /etc/shadow and /etc/hosts pointing at a host file: refused, neither read nor written.
    for name, args in (("shadow", ["--userpasswd", "root:Secret-123"]), ("hosts", ["--hostname", "link2"])):
        engine.exec(tiny_ve, f"cp /etc/{name} /root/{name}.bak; ln -sf {victim} /etc/{name}")
        r, seconds = timed_cli(cli, "set", str(tiny_ve), *args, "--save")
        assert r.returncode != 0 and seconds < 5, r.stderr
        assert f"/etc/{name} in the VE is a symlink" in one_line(r)
        assert victim.read_text() == "host data\n"
        assert (private / f"etc/{name}").is_symlink()
        engine.exec(tiny_ve, f"rm /etc/{name}; mv /root/{name}.bak /etc/{name}")
    # A whole directory pointing out of the VE.
    engine.exec(tiny_ve, f"mv /etc /etc.real && ln -s {host_dir} /etc")
    try:
        with pytest.raises(rootfs.UnsafePath, match="not a plain directory"):
            engine.set(tiny_ve, hostname="link3")
        assert sorted(p.name for p in host_dir.iterdir()) == ["victim"]
    finally:
        os.unlink(private / "etc")
        os.rename(private / "etc.real", private / "etc")


def test_reads_take_regular_files_only_with_a_size_cap(tmp_path):
    ve = tmp_path / "ve"
    (ve / "etc").mkdir(parents=True)
    os.mkfifo(ve / "etc/fifo")
    t0 = time.monotonic()
    with pytest.raises(rootfs.UnsafePath, match="is a FIFO"):
        rootfs.read_file(ve, "etc/fifo")
    assert time.monotonic() - t0 < 1
    (ve / "etc/zero").symlink_to("/dev/zero")
    with pytest.raises(rootfs.UnsafePath, match="is a symlink"):
        rootfs.read_file(ve, "etc/zero")
    with open(ve / "etc/big", "wb") as f:
        f.truncate(rootfs.MAX_READ + 1)
    with pytest.raises(rootfs.UnsafePath, match="larger than"):
        rootfs.read_file(ve, "etc/big")
    (ve / "etc/dir").mkdir()
    with pytest.raises(rootfs.UnsafePath, match="is a directory"):
        rootfs.read_file(ve, "etc/dir")
    with pytest.raises(rootfs.UnsafePath, match="is a directory"):
        rootfs.write_file(ve, "etc/dir", "x", uid=os.getuid(), gid=os.getgid())
    (ve / "etc/ok").write_bytes(b"x" * 100)
    assert rootfs.read_file(ve, "etc/ok") == b"x" * 100
    assert rootfs.read_file(ve, "etc/missing") is None


# --- 3. every VE has limits ---------------------------------------------------------------------

def cg(engine, ctid: int, controller: str, name: str) -> str | None:
    return cgroups.read(controller, engine.layout.cgroup_dir(ctid), name)


@pytest.mark.root
def test_a_ve_created_without_limits_gets_the_node_defaults(engine, cli, new_ctid):
    ctid = new_ctid()
    r = cli("vzctl", "create", str(ctid), "--ostemplate", "tiny")
    assert r.returncode == 0, r.stderr
    conf = engine.layout.conf(ctid).read_text()
    assert "RAM=" not in conf and "NUMPROC=" not in conf  # none of its own: the node's apply
    engine.start(ctid, wait_boot=True)
    try:
        if cgroups.version("memory") == 1:
            assert cg(engine, ctid, "memory", "memory.limit_in_bytes") == str(512 * MiB)
            if cgroups.swap_accounting():
                assert cg(engine, ctid, "memory", "memory.memsw.limit_in_bytes") == str(768 * MiB)
            assert cg(engine, ctid, "cpu", "cpu.shares") == "1024"
        else:
            assert cg(engine, ctid, "memory", "memory.max") == str(512 * MiB)
        assert cg(engine, ctid, "pids", "pids.max") == "512"
        if engine.storage.can_quota:
            assert engine.usage(ctid)["disk_limit_bytes"] == 10 << 30
        res = engine.status(ctid).extra["resources"]
        assert res["limits"]["RAM"] == 512 * MiB and "RAM" in res["node_defaults"]
        # Its own limit wins over the default; "unlimited" given on purpose is kept as such.
        engine.set(ctid, ram="128M", numproc="unlimited")
        assert engine.status(ctid).extra["resources"]["limits"]["RAM"] == 128 * MiB
        assert 'NUMPROC="unlimited"' in engine.layout.conf(ctid).read_text()
        assert cg(engine, ctid, "pids", "pids.max") == "max"
        engine.restart(ctid, wait_boot=True)
        assert cg(engine, ctid, "pids", "pids.max") == "max"
        if cgroups.version("memory") == 1:
            assert cg(engine, ctid, "memory", "memory.limit_in_bytes") == str(128 * MiB)
    finally:
        engine.stop(ctid, fast=True)


@pytest.mark.root
def test_node_defaults_come_from_vz_conf_and_a_bad_one_is_named(vz_root, new_ctid, monkeypatch):
    from vzengine import Engine, InvalidInput

    monkeypatch.setenv("VZ_DEFAULT_RAM", "300M")
    monkeypatch.setenv("VZ_DEFAULT_NUMPROC", "64")
    eng = Engine(vz_root, lock_wait=30)
    ctid = new_ctid()
    eng.create(ctid, "tiny")
    lxc_conf = eng.lxc.config_path(ctid).read_text()
    assert f"memory.limit_in_bytes = {300 * MiB}" in lxc_conf or f"memory.max = {300 * MiB}" in lxc_conf
    assert "pids.max = 64" in lxc_conf
    monkeypatch.setenv("VZ_DEFAULT_RAM", "lots")
    with pytest.raises(InvalidInput, match=r"DEFAULT_RAM='lots' in .*vz.conf"):
        Engine(vz_root).status(ctid)
