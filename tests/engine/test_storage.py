"""Storage: templates become VE roots by snapshot; identities differ; pools grow; roots purge clean."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from vzengine import Engine
from vzengine.errors import InvalidInput
from vzengine.storage import mountpoints

pytestmark = pytest.mark.root


def test_a_ve_root_is_a_btrfs_snapshot_of_its_template(engine, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    private = vz_root / f"pool/private/{ctid}"
    assert os.lstat(private).st_ino == 256  # a subvolume root

    def uuids(path) -> dict:
        out = subprocess.run(["btrfs", "subvolume", "show", str(path)], capture_output=True, text=True,
                             check=True).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}

    # A snapshot, not a copy: its parent is the template's own subvolume.
    assert uuids(private)["Parent UUID"] == uuids(engine.layout.template_root("tiny"))["UUID"]
    assert private.stat().st_uid == engine.layout.idmap[0]  # shifted into the VE's id range


@pytest.mark.slow
def test_ves_get_their_own_machine_id_and_ssh_host_keys(engine, new_ctid, vz_root):
    a, b = new_ctid(), new_ctid()
    for ctid in (a, b):
        engine.create(ctid, "debian-12-sysv")

    def ident(ctid):
        root = vz_root / f"pool/private/{ctid}/etc"
        return (root / "machine-id").read_text(), (root / "ssh/ssh_host_ed25519_key.pub").read_text().split()[1]

    assert ident(a)[0] != ident(b)[0] and ident(a)[1] != ident(b)[1]
    assert len(ident(a)[0].strip()) == 32


def test_destroy_removes_subvolumes_the_ve_made_inside(engine, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    private = vz_root / f"pool/private/{ctid}"
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(private / "root/nested")], check=True)
    engine.destroy(ctid)
    assert not private.exists()


def test_template_list_shows_built_templates(cli):
    r = cli("vzctl", "template", "list")
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert {"tiny", "debian-12", "debian-12-sysv"} <= set(rows)
    assert rows["tiny"][1] == "busybox" and rows["tiny"][2] == "yes"


@pytest.fixture
def scratch_root():
    """A second private root, for tests that change the pool itself."""
    root = Path(tempfile.mkdtemp(prefix="vztest-scratch-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    yield root
    Engine(root).purge()
    shutil.rmtree(root, ignore_errors=True)


def test_the_pool_grows_online(scratch_root):
    (scratch_root / "vz.conf").write_text('POOL_SIZE="1G"\n')
    eng = Engine(scratch_root)
    eng.ensure_ready()
    before = os.statvfs(eng.layout.pool)
    eng.storage.grow("2G")
    after = os.statvfs(eng.layout.pool)
    assert after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize * 1.8


def test_purge_leaves_no_mount_loop_device_or_cgroup(scratch_root):
    (scratch_root / "vz.conf").write_text('POOL_SIZE="1G"\n')
    eng = Engine(scratch_root)
    eng.create(501, "tiny")
    eng.start(501)
    tag = eng.layout.tag
    eng.purge()
    assert str(eng.layout.pool) not in mountpoints()
    loops = subprocess.run(["losetup", "-j", str(eng.layout.pool_image)], capture_output=True, text=True).stdout
    assert loops.strip() == ""
    assert not list(Path("/sys/fs/cgroup").glob(f"*/vz-{tag}"))
    monitors = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(eng.layout.lxcpath) not in monitors


def test_the_directory_backend_works_without_btrfs(scratch_root):
    (scratch_root / "vz.conf").write_text('STORAGE="dir"\n')
    eng = Engine(scratch_root)
    eng.create(502, "tiny", hostname="plain")
    private = eng.layout.private(502)
    assert os.lstat(private).st_ino != 256
    eng.start(502, wait_boot=True)
    r = eng.exec(502, "hostname")
    log = eng.layout.logdir / "502.lxc.log"
    assert (r.returncode, r.stdout.strip()) == (0, "plain"), (r.stderr, log.read_text() if log.exists() else "")
    eng.destroy(502)
    assert not private.exists()


def test_a_pool_keeps_the_quota_mode_it_was_made_with(scratch_root):
    (scratch_root / "vz.conf").write_text('POOL_SIZE="1G"\nPOOL_QUOTA="full"\n')
    eng = Engine(scratch_root)
    eng.ensure_ready()
    info = eng.storage.pool_info()
    assert (info["quota_mode"], info["quota_enforced"]) == ("qgroup", True), info
    # Asking for simple quotas later does not switch a pool that holds data: it would uncount it all.
    eng.create(503, "tiny", diskspace="300M")
    eng.storage.teardown()
    (scratch_root / "vz.conf").write_text('POOL_SIZE="1G"\n')
    eng = Engine(scratch_root)
    eng.ensure_ready()
    assert eng.storage.pool_info()["quota_mode"] == "qgroup"
    assert eng.usage(503)["disk_limit_bytes"] == 300 << 20
    # Under full qgroups the VE's root references its template's files too.
    assert eng.usage(503)["disk_bytes"] > 1 << 20
    eng.destroy(503)


def test_a_bad_pool_quota_setting_is_refused_before_a_pool_is_made(scratch_root):
    (scratch_root / "vz.conf").write_text('POOL_SIZE="1G"\nPOOL_QUOTA="fast"\n')
    eng = Engine(scratch_root)
    with pytest.raises(InvalidInput, match="POOL_QUOTA='fast'"):
        eng.ensure_ready()
    assert not eng.layout.pool_image.exists()
    assert str(eng.layout.pool) not in mountpoints()
