"""vzctl set changes a VE live and, with --save, keeps the change."""

import subprocess

import pytest

from vzengine import Unsupported

pytestmark = pytest.mark.root


def test_hostname_changes_live_and_is_saved(cli, engine, tiny_ve, vz_root):
    r = cli("vzctl", "set", str(tiny_ve), "--hostname", "renamed.example.com", "--save")
    assert r.returncode == 0, r.stderr
    assert engine.exec(tiny_ve, "hostname").stdout.strip() == "renamed.example.com"
    assert engine.exec(tiny_ve, "cat /etc/hostname").stdout.strip() == "renamed.example.com"
    assert "127.0.1.1\trenamed.example.com renamed" in engine.exec(tiny_ve, "cat /etc/hosts").stdout
    assert 'HOSTNAME="renamed.example.com"' in (vz_root / f"conf/{tiny_ve}.conf").read_text()
    engine.restart(tiny_ve, wait_boot=True)
    assert engine.exec(tiny_ve, "hostname").stdout.strip() == "renamed.example.com"


def test_password_and_nameserver(net, cli, engine, tiny_ve):
    r = cli("vzctl", "set", str(tiny_ve), "--userpasswd", "root:n3w-pass", "--nameserver", net.ip(1),
            "--nameserver", net.ip6(0x1), "--searchdomain", "lab.example", "--save")
    assert r.returncode == 0, r.stderr
    hashed = engine.exec(tiny_ve, "grep ^root: /etc/shadow").stdout.split(":")[1]
    salt = hashed.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "n3w-pass"], capture_output=True, text=True)
    assert again.stdout.strip() == hashed
    resolv = engine.exec(tiny_ve, "cat /etc/resolv.conf").stdout
    assert f"nameserver {net.ip(1)}\nnameserver {net.ip6(0x1)}\n" in resolv and "search lab.example" in resolv
    assert engine.status(tiny_ve).nameservers == [net.ip(1), net.ip6(0x1)]


@pytest.mark.slow
def test_a_new_user_is_created_in_a_running_ve(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv")
    engine.start(ctid, wait_boot=True)
    engine.set(ctid, userpasswd=[("alice", "wonder")])
    assert engine.exec(ctid, "grep ^alice: /etc/shadow").stdout.split(":")[1].startswith("$")
    assert engine.exec(ctid, "test -d /home/alice").returncode == 0


def test_a_new_user_in_a_ve_without_useradd_is_a_clear_error(engine, tiny_ve):
    with pytest.raises(Unsupported, match="neither useradd nor adduser"):
        engine.set(tiny_ve, userpasswd=[("alice", "wonder")])


def test_set_on_a_stopped_ve_does_not_follow_symlinks_planted_inside(engine, tiny_ve, tmp_path):
    victim = tmp_path / "host-file"
    victim.write_text("untouched\n")
    engine.exec(tiny_ve, f"rm /etc/hostname && ln -s {victim} /etc/hostname")
    engine.stop(tiny_ve, fast=True)
    engine.set(tiny_ve, hostname="safe")
    assert victim.read_text() == "untouched\n"
