"""A VE sees only its own processes, hostname and files; its root is nobody on the host."""

import os

import pytest

pytestmark = pytest.mark.root


def test_a_ve_sees_only_its_own_processes(engine, tiny_ve):
    pids = engine.exec(tiny_ve, "ls /proc | grep -E '^[0-9]+$'").stdout.split()
    assert "1" in pids
    assert len(pids) < 10, pids  # init, the shell and its children: not the host's hundreds
    host_pid = str(os.getpid())
    assert engine.exec(tiny_ve, f"test -e /proc/{host_pid}/status").returncode != 0 or int(host_pid) < 10


def test_a_ve_has_its_own_hostname(engine, tiny_ve):
    assert engine.exec(tiny_ve, "hostname").stdout.strip() == f"t{tiny_ve}"
    assert os.uname().nodename != f"t{tiny_ve}"


def test_root_inside_is_not_root_on_the_host(engine, tiny_ve):
    pid = engine.lxc.init_pid(tiny_ve)
    with open(f"/proc/{pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(engine.host_root_uid(engine.config(tiny_ve)))  # its own range
    assert uid_line.split()[1] not in ("0", str(engine.layout.idmap[0]))  # not the shared map of old
    assert engine.exec(tiny_ve, "id -u").stdout.strip() == "0"


def test_root_inside_cannot_read_host_files(engine, tiny_ve, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    os.chmod(tmp_path, 0o711)
    out = engine.exec(tiny_ve, f"cat {secret} /proc/1/root{secret} 2>&1; cat /etc/shadow | head -1").stdout
    assert "host only" not in out
    pid = engine.lxc.init_pid(tiny_ve)
    # mknod and mount of the host's disk are refused: no CAP_MKNOD/CAP_SYS_ADMIN on the host
    r = engine.exec(tiny_ve, "mknod /tmp/sda b 8 0 && cat /tmp/sda | head -c1")
    assert r.returncode != 0
    assert pid is not None


def test_ipc_is_private(engine, new_ctid):
    a, b = new_ctid(), new_ctid()
    for ctid in (a, b):
        engine.create(ctid, "tiny")
        engine.start(ctid)
    ns = {ctid: os.readlink(f"/proc/{engine.lxc.init_pid(ctid)}/ns/ipc") for ctid in (a, b)}
    assert ns[a] != ns[b] != os.readlink("/proc/self/ns/ipc")
