"""A VE's life: create, start, exec, restart, stop, destroy, through the CLI as an admin would."""

import json

import pytest

pytestmark = pytest.mark.root


def test_it_runs_the_whole_lifecycle_on_the_tiny_template(cli, engine, new_ctid, vz_root):
    ctid = str(new_ctid())
    r = cli("vzctl", "create", ctid, "--ostemplate", "tiny", "--hostname", "web1", "--userpasswd", "root:s3cret")
    assert r.returncode == 0, r.stderr
    assert f"VE {ctid} created" in r.stdout
    assert cli("vzctl", "status", ctid).stdout.strip() == f"VE {ctid} exist mounted stopped"

    r = cli("vzctl", "start", ctid, "--wait")
    assert r.returncode == 0, r.stderr
    ps = cli("vzctl", "exec", ctid, "ps", "-o", "pid,comm")
    lines = ps.stdout.split("\n")[1:]
    assert lines[0].split() == ["1", "init"], ps.stdout
    assert cli("vzctl", "exec", ctid, "hostname").stdout.strip() == "web1"

    listing = cli("vzlist", "-a").stdout.splitlines()
    assert listing[0].split() == ["CTID", "NPROC", "STATUS", "IP_ADDR", "HOSTNAME"]
    row = next(ln.split() for ln in listing if ln.split()[0] == ctid)
    assert row[2] == "running" and row[4] == "web1" and int(row[1]) >= 1

    r = cli("vzctl", "restart", ctid, "--wait")
    assert r.returncode == 0, r.stderr
    assert engine.status(int(ctid)).running

    assert cli("vzctl", "stop", ctid).returncode == 0
    assert engine.status(int(ctid)).status == "stopped"
    assert ctid not in cli("vzlist").stdout.split()

    assert cli("vzctl", "destroy", ctid).returncode == 0
    assert cli("vzctl", "status", ctid).stdout.strip() == f"VE {ctid} deleted unmounted down"
    assert not (vz_root / "pool/private" / ctid).exists()
    assert not (vz_root / "lxc" / ctid).exists()


def test_it_sets_the_root_password_at_create(engine, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny", userpasswd=[("root", "s3cret")])
    line = (vz_root / f"pool/private/{ctid}/etc/shadow").read_text().splitlines()[0]
    hashed = line.split(":")[1]
    assert hashed.startswith("$6$")
    salt = hashed.split("$")[2]
    import subprocess

    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "s3cret"], capture_output=True, text=True)
    assert again.stdout.strip() == hashed


def test_exec_returns_the_commands_exit_status(cli, tiny_ve):
    r = cli("vzctl", "exec", str(tiny_ve), "exit 3")
    assert r.returncode == 3
    r = cli("vzctl", "exec", str(tiny_ve), "cat", input="through stdin\n")
    assert r.stdout == "through stdin\n"


def test_enter_opens_a_root_shell(tiny_ve, engine):
    import subprocess

    argv = engine.enter_argv(tiny_ve)
    proc = subprocess.run(argv, input="id -u; hostname; exit\n", capture_output=True, text=True, timeout=30)
    assert proc.stdout.split()[:2] == ["0", f"t{tiny_ve}"]


def test_vzlist_json_and_fields(cli, tiny_ve):
    data = json.loads(cli("vzlist", "-j").stdout)
    mine = next(d for d in data if d["ctid"] == tiny_ve)
    assert mine["status"] == "running" and mine["ostemplate"] == "tiny"
    out = cli("vzlist", "-H", "-o", "ctid,status", str(tiny_ve)).stdout.split()
    assert out == [str(tiny_ve), "running"]


def test_start_onboot_starts_only_marked_ves(cli, engine, new_ctid):
    marked, unmarked = new_ctid(), new_ctid()
    engine.create(marked, "tiny")
    engine.create(unmarked, "tiny")
    assert cli("vzctl", "set", str(marked), "--onboot", "yes", "--save").returncode == 0
    r = cli("vzctl", "start", "--onboot")
    assert r.returncode == 0, r.stderr
    assert engine.status(marked).running
    assert not engine.status(unmarked).running


@pytest.mark.slow
@pytest.mark.parametrize("template", ["debian-12", "debian-12-sysv"])
def test_it_runs_debian_with_its_init_and_sshd(engine, new_ctid, template):
    ctid = new_ctid()
    engine.create(ctid, template, hostname="deb1", userpasswd=[("root", "pw")])
    engine.start(ctid, wait_boot=True)
    ps = engine.exec(ctid, "ps -eo pid,comm --no-headers").stdout.split("\n")
    first = ps[0].split()
    assert first[0] == "1" and first[1] in ("systemd", "init")
    assert any("sshd" in line for line in ps), ps
    assert engine.exec(ctid, "hostname").stdout.strip() == "deb1"
    for tool in ("ip", "ping", "iptables"):
        assert engine.exec(ctid, f"command -v {tool}").returncode == 0, tool
    if template == "debian-12":
        failed = engine.exec(ctid, "systemctl --failed --no-legend --plain").stdout.strip()
        assert failed == "", failed
    engine.stop(ctid)
    assert not engine.status(ctid).running


def test_stop_lets_processes_finish_on_term_and_kills_those_that_ignore_it(engine, tiny_ve):
    """A stop sends init its halt signal; the VE ends as soon as init is the only process left (BusyBox's
    init would sleep two more seconds), so a process that exits on TERM gets to finish first (BusyBox gives it a
    second before KILL), and one that
    ignores TERM is killed when the timeout runs out."""
    engine.exec(tiny_ve, "(trap 'sleep 0.1; echo done > /root/termed; exit 0' TERM; "
                         "while :; do sleep 0.05; done) >/dev/null 2>&1 &")
    engine.stop(tiny_ve)
    assert not engine.is_running(tiny_ve)
    assert (engine.layout.private(tiny_ve) / "root/termed").read_text() == "done\n"

    engine.start(tiny_ve, wait_boot=True)
    engine.exec(tiny_ve, "(trap '' TERM; while :; do sleep 0.05; done) >/dev/null 2>&1 &")
    engine.stop(tiny_ve, timeout=2)
    assert not engine.is_running(tiny_ve)
    assert engine.lxc.state(tiny_ve) == "STOPPED"
