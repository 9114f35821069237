"""Rescue mode (vzctl rescue): a VE whose init is gone boots a rescue system with its own root at /mnt, is
repaired from there and boots again; a half-done entry leaves nothing behind; bad input changes nothing; the
rescue system's root reaches this VE's files only, with the VE's own ids."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.conftest import root_tree
from vzengine import CommandFailed, StateError, accounting, rescue, sshkeys

pytestmark = pytest.mark.root


def leftovers(root: Path, ctid: int) -> list[str]:
    """What rescue mode leaves on the host for VE ctid: its rescue root, marker, disk mount point, mounts."""
    found = [str(p.relative_to(root)) for p in (root / f"pool/rescue/{ctid}", root / f"rescue/{ctid}.json",
                                                root / f"mnt/{ctid}/disk") if os.path.lexists(p)]
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].startswith(f"{root}/mnt/{ctid}/") and fields[3] != f"/private/{ctid}":
                found.append(f"mount {fields[3]} at {fields[4]}")
            if fields[3] == f"/rescue/{ctid}":
                found.append(f"mount of the rescue root at {fields[4]}")
    return found


def ve_mounts(root: Path, ctid: int) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f if line.split()[4].startswith(f"{root}/mnt/{ctid}/"))


def sh(engine, ctid: int, line: str) -> str:
    proc = engine.exec(ctid, line, timeout=60)
    assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture
def tiny_ve(engine, new_ctid):
    """A running tiny VE; rescued with the tiny template too, so these tests boot no Debian."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"t{ctid}.example")
    engine.start(ctid, wait_boot=True)
    return ctid


# --- the whole story --------------------------------------------------------------------------------------

def _ssh(key: Path, address: str, line: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
                           f"root@{address}", line], capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_a_ve_whose_init_is_gone_is_repaired_from_rescue_and_boots(engine, new_ctid, vz_root, cli, tmp_path):
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv", hostname="broken.example", ipadd=["auto"])
    address = engine.status(ctid).ip_addresses[0]
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshkeys.set_keys(engine, ctid, [Path(f"{key}.pub").read_text().strip()], password_login=False)
    private = vz_root / f"pool/private/{ctid}"
    (private / "sbin/init").unlink()  # the customer's mistake
    with pytest.raises(CommandFailed, match=f"VE {ctid} failed to start"):
        engine.start(ctid)

    entered = cli("vzctl", "rescue", str(ctid), "--wait")
    assert entered.returncode == 0, entered.stderr
    assert "its own root is at /mnt" in entered.stdout
    assert engine.status(ctid).status == "rescue"
    listed = cli("vzlist", "-H", "-o", "ctid,status,hostname")  # the default listing shows it: it runs
    assert listed.stdout.split() == [str(ctid), "rescue", "broken.example"]
    seen = cli("vzctl", "exec", str(ctid), "cat /mnt/etc/hostname; hostname")
    assert seen.stdout.split() == ["broken.example", "broken.example"]
    # the customer logs in with their own key, at the VE's own address, and repairs it
    deadline = time.monotonic() + 30
    while (login := _ssh(key, address, "cat /mnt/etc/hostname")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert login.stdout.strip() == "broken.example", login.stderr
    assert _ssh(key, address, "cp -a /sbin/init /mnt/sbin/init").returncode == 0
    assert (private / "sbin/init").stat().st_uid == engine.layout.idmap[0]  # stored as the VE's root

    left = cli("vzctl", "rescue", str(ctid), "--leave", "--start", "--wait")
    assert left.returncode == 0, left.stderr
    info = engine.status(ctid)
    assert info.status == "running" and info.ip_addresses == [address]
    hostname, init = sh(engine, ctid, "cat /etc/hostname; readlink /proc/1/exe").split()
    assert hostname == "broken.example" and init.endswith("/sbin/init")  # its own init runs again
    assert leftovers(vz_root, ctid) == []


# --- what a VE in rescue refuses, and destroy -------------------------------------------------------------

def test_a_ve_in_rescue_refuses_to_boot_copy_or_replace_its_disk(engine, new_ctid, tiny_ve, vz_root, tmp_path):
    ctid, other = tiny_ve, new_ctid()
    rescue.enter(engine, ctid, template="tiny", wait_boot=True)
    init = engine.lxc.init_pid(ctid)
    refused = {
        "start it": lambda: engine.start(ctid),
        "restart it": lambda: engine.restart(ctid),
        "take a snapshot": lambda: engine.snapshot(ctid, "before"),
        "back it up": lambda: engine.backup(ctid, tmp_path),
        "reinstall it": lambda: engine.reinstall(ctid),
        "suspend it": lambda: engine.suspend(ctid),
        "clone it": lambda: engine.clone(ctid, other),
    }
    for what, call in refused.items():
        with pytest.raises(StateError, match=rf"VE {ctid} is in rescue mode: leave it first "
                                             rf"\(vzctl rescue {ctid} --leave\), then {what}"):
            call()
    assert engine.status(ctid).status == "rescue" and engine.lxc.init_pid(ctid) == init
    assert engine.snapshot_list(ctid) == [] and list(tmp_path.iterdir()) == [] and not engine.exists(other)
    # stopping the rescue system keeps the VE in rescue; entering again boots it again
    engine.stop(ctid, fast=True)
    assert engine.status(ctid).status == "rescue" and not engine.is_running(ctid)
    rescue.enter(engine, ctid, wait_boot=True)
    assert engine.is_running(ctid) and engine.status(ctid).extra["rescue"]["template"] == "tiny"


def test_destroying_a_ve_in_rescue_removes_its_rescue_root_too(engine, tiny_ve, vz_root):
    rescue.enter(engine, tiny_ve, template="tiny")
    assert (vz_root / f"pool/rescue/{tiny_ve}").is_dir()
    engine.destroy(tiny_ve)
    assert not engine.exists(tiny_ve)
    assert leftovers(vz_root, tiny_ve) == [] and ve_mounts(vz_root, tiny_ve) == []
    assert not (vz_root / f"mnt/{tiny_ve}").exists()


# --- bad input --------------------------------------------------------------------------------------------

def test_bad_rescue_requests_say_why_and_change_nothing(engine, tiny_ve, vz_root, cli):
    ctid = tiny_ve
    before, init, mounts = root_tree(vz_root), engine.lxc.init_pid(ctid), ve_mounts(vz_root, ctid)
    cases = [
        (["rescue", "999999"], 3, "VE 999999 does not exist"),
        (["rescue", str(ctid), "--template", "no-such"], 3, "unknown OS template 'no-such'"),
        (["rescue", str(ctid), "--template", "debian-12"], 2, "template debian-12 boots systemd"),
        (["rescue", str(ctid), "--template", "../x"], 2, "template"),
        (["rescue", str(ctid), "--leave"], 5, f"VE {ctid} is not in rescue mode"),
        (["rescue", str(ctid), "--start"], 2, "--start goes with --leave"),
        (["rescue", "abc"], 2, "abc"),
    ]
    for args, code, message in cases:
        proc = cli("vzctl", *args)
        assert (proc.returncode, proc.stdout) == (code, ""), (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
        assert root_tree(vz_root) == before and engine.lxc.init_pid(ctid) == init
        assert ve_mounts(vz_root, ctid) == mounts and leftovers(vz_root, ctid) == []
    assert engine.status(ctid).status == "running"

    assert cli("vzctl", "rescue", str(ctid), "--template", "tiny").returncode == 0
    before, init = root_tree(vz_root), engine.lxc.init_pid(ctid)
    again = cli("vzctl", "rescue", str(ctid))
    assert again.returncode == 5 and f"VE {ctid} is already in rescue mode (template tiny)" in again.stderr
    assert root_tree(vz_root) == before and engine.lxc.init_pid(ctid) == init
    assert cli("vzctl", "rescue", str(ctid), "--leave", "--template", "tiny").returncode == 2
    assert engine.status(ctid).status == "rescue" and engine.lxc.init_pid(ctid) == init


# --- a failure half-way -----------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["rescue:before-marker", "rescue:after-start"])
@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_a_failed_entry_leaves_the_ve_as_it_was(engine, tiny_ve, vz_root, monkeypatch, point, running):
    ctid = tiny_ve
    if not running:
        engine.stop(ctid, fast=True)
    before = root_tree(vz_root)
    monkeypatch.setenv("VZ_FAIL_AT", point)
    with pytest.raises(CommandFailed, match="injected failure"):
        rescue.enter(engine, ctid, template="tiny")
    monkeypatch.delenv("VZ_FAIL_AT")
    assert leftovers(vz_root, ctid) == [] and root_tree(vz_root) == before
    assert engine.status(ctid).status == ("running" if running else "stopped")
    if running:  # booted its own system again
        assert ve_mounts(vz_root, ctid) == [f"{vz_root}/mnt/{ctid}/root"]
        assert sh(engine, ctid, "cat /etc/hostname").strip() == f"t{ctid}.example"
    else:
        assert ve_mounts(vz_root, ctid) == []


def test_a_mount_that_fails_for_real_undoes_the_entry(engine, tiny_ve, vz_root):
    ctid = tiny_ve
    engine.stop(ctid, fast=True)
    before = root_tree(vz_root)
    top = vz_root / f"mnt/{ctid}"
    top.mkdir(mode=0o700)
    (top / "disk").write_text("in the way\n")  # where the VE's own root would be mounted for /mnt
    try:
        with pytest.raises(StateError, match="cannot remove"):
            rescue.enter(engine, ctid, template="tiny")
        assert engine.status(ctid).status == "stopped" and root_tree(vz_root) == before
        assert not (vz_root / f"pool/rescue/{ctid}").exists() and not (vz_root / f"rescue/{ctid}.json").exists()
        assert ve_mounts(vz_root, ctid) == []
    finally:
        (top / "disk").unlink()
        with contextlib.suppress(OSError):
            top.rmdir()
    rescue.enter(engine, ctid, template="tiny")  # with the way clear, it works
    assert engine.status(ctid).status == "rescue"


def test_a_failed_leave_stays_in_rescue_and_can_be_retried(engine, tiny_ve, vz_root, monkeypatch):
    ctid = tiny_ve
    rescue.enter(engine, ctid, template="tiny")
    monkeypatch.setenv("VZ_FAIL_AT", "rescue:leave")
    with pytest.raises(CommandFailed, match="injected failure"):
        rescue.leave(engine, ctid, start=True)
    monkeypatch.delenv("VZ_FAIL_AT")
    assert engine.status(ctid).status == "rescue" and (vz_root / f"pool/rescue/{ctid}").is_dir()
    with pytest.raises(StateError, match="in rescue mode"):
        engine.start(ctid)
    info = rescue.leave(engine, ctid, start=True, wait_boot=True)
    assert info.status == "running" and leftovers(vz_root, ctid) == []


# --- the attack: root of the rescue system ----------------------------------------------------------------

def test_the_rescue_systems_root_reaches_only_its_own_ves_files(engine, new_ctid, tiny_ve, vz_root):
    victim, ctid = new_ctid(), tiny_ve
    engine.create(victim, "tiny")
    base = engine.layout.idmap[0]
    secret = vz_root / f"pool/private/{victim}/root/victim-secret"
    secret.write_text("victim-secret-4711\n")
    os.chown(secret, base, base)
    os.chmod(secret, 0o600)
    engine.start(victim, wait_boot=True)
    # The VE's root plants links to the host's files where the host copies from into the rescue system.
    private = vz_root / f"pool/private/{ctid}"
    (private / "root/.ssh").mkdir(exist_ok=True)
    os.symlink("/etc/shadow", private / "root/.ssh/authorized_keys")
    os.unlink(private / "etc/shadow")
    os.symlink("/etc/shadow", private / "etc/shadow")
    rescue.enter(engine, ctid, template="tiny", wait_boot=True)
    host = engine.host_range(engine.config(ctid))

    assert sh(engine, ctid, "cat /proc/self/uid_map").split() == ["0", str(host), "65536"]
    btrfs = [ln.split()[3:5] for ln in sh(engine, ctid, "cat /proc/self/mountinfo").splitlines() if " - btrfs " in ln]
    assert sorted(btrfs) == [[f"/private/{ctid}", "/mnt"], [f"/rescue/{ctid}", "/"]]
    search = ("for d in /*; do case $d in /proc|/sys|/dev) ;; *) grep -rsl victim-secret-4711 $d;; esac; done; "
              "ls /mnt/root; ls /mnt/..")
    found = sh(engine, ctid, search)
    assert "victim-secret" not in found and "mnt" in found  # /mnt/.. is the rescue system's own root
    # What it writes in /mnt is the VE's, stored in the VE's own id range, never a host id.
    sh(engine, ctid, "touch /mnt/root/made-in-rescue; chmod 4755 /mnt/root/made-in-rescue")
    made = os.stat(private / "root/made-in-rescue")
    assert (made.st_uid, made.st_gid) == (base, base)
    # Its processes run as the VE's own host range, and the host copied nothing through the planted links.
    assert os.stat(f"/proc/{engine.lxc.init_pid(ctid)}").st_uid == host
    copied = vz_root / f"pool/rescue/{ctid}"
    # what the rescue system itself writes has a quota of its own (it is outside the VE's subvolume)
    assert accounting.disk_usage(accounting.qgroups_dir(engine.layout.pool), copied)[1] == 2 << 30
    assert not (copied / "root/.ssh/authorized_keys").exists()
    assert (copied / "etc/shadow").read_text() != Path("/etc/shadow").read_text()
    # the victim is untouched and still runs
    assert secret.read_text() == "victim-secret-4711\n" and engine.is_running(victim)
    rescue.leave(engine, ctid)
    assert leftovers(vz_root, ctid) == [] and engine.status(ctid).status == "stopped"
