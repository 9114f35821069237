"""The disk quota holds: a VE's root cannot escape its btrfs qgroup limit, and a pool whose quota
accounting went wrong is found, rescanned and reported instead of silently unenforced.

Real VEs (debian-12-sysv: it has perl and coreutils' cp) in a private engine root. The attacks
run inside as the VE's root: the real btrfs tool copied in, and perl making the raw ioctls and
syscalls, high bits set in the request included. Afterwards the host reads what the pool holds.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import _ctids, free_test_net, have_root_tools
from vzengine import Engine, accounting, btrfs, seccomp
from vzengine.resources import ResourcesFeature

MiB = 1 << 20
HEADROOM = 60 * MiB  # what each VE may write on top of its template
MARGIN = 2 * MiB  # how far past its limit a VE's qgroup may read (metadata rounding)
POOL_MARGIN = 16 * MiB  # the pool's own metadata for what the VE wrote (DUP, trees)
TEMPLATE = "debian-12-sysv"
BIN = Path(sys.executable).parent

# Each attempt prints "name errno" (0: the call worked). "-hi" repeats a request with bit 32 set:
# the kernel reads the request as 32 bits, so a filter comparing all 64 would let it through.
ATTACK = r"""
use strict;
my %req = (snap=>0x50009401, subvol=>0x5000940e, snap2=>0x50009417, subvol2=>0x50009418,
           clone=>0x40049409, clonerange=>0x4020940d, dedupe=>0xc0189436);
sub try { my ($name, $nr, @args) = @_; $! = 0; my $r = syscall($nr, @args);
          printf "%s %d\n", $name, $r == -1 ? $!+0 : 0; }
mkdir "/root/t"; system("dd if=/dev/urandom of=/root/t/src bs=1M count=1 status=none") == 0 or die;
open(my $dir, "<", "/root/t") or die;
for my $hi (0, 1<<32) {
  my $t = $hi ? "-hi" : "";
  open(my $top, "<", "/") or die;
  try("subvol$t", 16, fileno($dir), $req{subvol} | $hi, pack("q a4088", -1, "v1sub$t"));
  try("subvol2$t", 16, fileno($dir), $req{subvol2} | $hi, pack("q Q Q x32 a4040", -1, 0, 0, "v2sub$t"));
  try("snap$t", 16, fileno($dir), $req{snap} | $hi, pack("q a4088", fileno($top), "v1snap$t"));
  try("snap2$t", 16, fileno($dir), $req{snap2} | $hi, pack("q Q Q x32 a4040", fileno($top), 0, 0, "v2snap$t"));
  open(my $in, "<", "/root/t/src") or die; open(my $out, "+>", "/root/t/clone$t") or die;
  try("clone$t", 16, fileno($out), $req{clone} | $hi, fileno($in));
  try("clonerange$t", 16, fileno($out), $req{clonerange} | $hi, pack("q Q Q Q", fileno($in), 0, 0, 0));
  try("dedupe$t", 16, fileno($in), $req{dedupe} | $hi,
      pack("Q Q S S L q Q Q l L", 0, 1<<20, 1, 0, 0, fileno($out), 0, 0, 0, 0));
}
open(my $in, "<", "/root/t/src") or die; open(my $out, "+>", "/root/t/cfr") or die;
try("copy_file_range", 326, fileno($in), 0, fileno($out), 0, 1<<20, 0);
try("umount_force", 166, "/nonexistent-vz", 1);
"""


def private_root(extra: str = ""):
    """A private engine root with a 2 GiB pool of its own; purged afterwards."""
    if not have_root_tools():
        pytest.skip("needs root, LXC and btrfs")
    net = free_test_net()
    root = Path(tempfile.mkdtemp(prefix="vzquota-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "vz.conf").write_text(f'POOL_SIZE="2G"\nIP_POOL="{net.pool}"\nIP6_POOL="{net.pool6}"\n{extra}')
    try:
        Engine(root).ensure_ready()
        yield root
    finally:
        Engine(root).purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def qroot():
    """A new pool, as the engine makes it: simple quotas on this kernel."""
    yield from private_root()


@pytest.fixture(scope="module")
def full_root():
    """A pool with full qgroups (POOL_QUOTA="full"), as pools made before simple quotas are."""
    yield from private_root('POOL_QUOTA="full"\n')


@pytest.fixture
def qengine(qroot):
    return Engine(qroot, lock_wait=30)


@pytest.fixture
def full_engine(full_root):
    return Engine(full_root, lock_wait=30)


def disk_used(eng: Engine, ctid: int) -> int:
    """Bytes the VE's qgroup counts, after committing what is in flight."""
    res = next(f for f in eng.features if isinstance(f, ResourcesFeature))
    used = res.disk_used(ctid, fresh=True)
    assert used is not None
    return used


def pool_used(eng: Engine) -> int:
    """Bytes the pool really has in use (data and metadata), after a commit."""
    subprocess.run(["btrfs", "filesystem", "sync", str(eng.layout.pool)], check=True)
    out = subprocess.run(["btrfs", "filesystem", "usage", "-b", str(eng.layout.pool)], capture_output=True,
                         text=True, check=True).stdout
    return next(int(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("Used:"))


def sh(eng: Engine, ctid: int, script: str, input=None) -> subprocess.CompletedProcess:
    return eng.exec(ctid, script, input=input, timeout=120)


def running_ve(eng: Engine):
    """A running VE whose quota is what it counts after create plus HEADROOM; destroyed after the test."""
    ctid = next(_ctids)
    eng.create(ctid, TEMPLATE, hostname=f"q{ctid}")
    try:
        eng.set(ctid, diskspace=str(disk_used(eng, ctid) + HEADROOM))
        eng.start(ctid, wait_boot=True)
        yield ctid
    finally:
        if eng.exists(ctid):
            eng.destroy(ctid)


@pytest.fixture
def ve(qengine):
    yield from running_ve(qengine)


@pytest.fixture
def full_ve(full_engine):
    yield from running_ve(full_engine)


def attack(eng: Engine, ctid: int) -> dict[str, int]:
    """Run the raw-ioctl attack inside the VE; return {attempt: errno}."""
    r = sh(eng, ctid, "cat > /root/attack.pl && perl /root/attack.pl", input=ATTACK)
    assert r.returncode == 0, r.stderr
    return {name: int(code) for name, code in (line.split() for line in r.stdout.splitlines())}


def copy_btrfs_tool(eng: Engine, ctid: int) -> None:
    """Put the host's btrfs tool (and the one library the template lacks) into the VE."""
    lzo = next(Path("/lib/x86_64-linux-gnu").glob("liblzo2.so.2*"))
    r = sh(eng, ctid, "cat > /usr/local/lib/liblzo2.so.2", input=lzo.read_bytes())
    assert r.returncode == 0, r.stderr
    r = sh(eng, ctid, "cat > /usr/local/sbin/btrfs && chmod 755 /usr/local/sbin/btrfs",
           input=Path(shutil.which("btrfs")).read_bytes())
    assert r.returncode == 0, r.stderr


def subvolumes(eng: Engine) -> list[str]:
    out = subprocess.run(["btrfs", "subvolume", "list", str(eng.layout.pool)], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split(" path ", 1)[1] for line in out.splitlines())


def test_it_writes_one_profile_with_lxcs_default_denials_and_the_quota_rules():
    text = seccomp.profile_text()
    if seccomp.LXC_DEFAULT_PROFILE.exists():
        assert text.startswith(seccomp.LXC_DEFAULT_PROFILE.read_text().rstrip("\n") + "\n")
    assert text.splitlines()[:2] == ["2", "denylist"]
    # The request numbers of linux/btrfs.h and linux/fs.h, and the errno each gets.
    for nr, err in [(0x50009401, 1), (0x5000940e, 1), (0x50009417, 1), (0x50009418, 1),
                    (0x40049409, 95), (0x4020940d, 95), (0xc0189436, 95)]:
        assert f"ioctl errno {err} [1,{nr:#x},SCMP_CMP_MASKED_EQ,0xffffffff]" in text.splitlines()
    assert "copy_file_range errno 38" in text.splitlines()
    # LXC reads anything after "]" as one more argument filter: no trailing comments on rules.
    assert all(line.endswith("]") for line in text.splitlines() if line.startswith("ioctl"))


@pytest.mark.root
def test_it_refuses_subvolumes_and_snapshots_made_inside_a_ve(qengine, ve):
    before = subvolumes(qengine)
    copy_btrfs_tool(qengine, ve)
    tool = "LD_LIBRARY_PATH=/usr/local/lib /usr/local/sbin/btrfs"
    r = sh(qengine, ve, f"{tool} subvolume create /root/nest")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    r = sh(qengine, ve, f"{tool} subvolume snapshot / /root/snap")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    r = sh(qengine, ve, f"{tool} subvolume snapshot -r / /root/rosnap")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr

    got = attack(qengine, ve)
    for name in ("subvol", "subvol2", "snap", "snap2"):
        assert got[name] == errno.EPERM and got[f"{name}-hi"] == errno.EPERM, got
    # LXC's own default denials still hold in the combined profile (force-umount gets EACCES).
    assert got["umount_force"] == errno.EACCES, got

    assert subvolumes(qengine) == before
    assert qengine.storage.nested_subvolumes() == []


@pytest.mark.root
def test_it_counts_what_a_ve_writes_where_its_subvolume_would_have_been(qengine, ve):
    limit = qengine.usage(ve)["disk_limit_bytes"]
    pool0 = pool_used(qengine)
    copy_btrfs_tool(qengine, ve)
    r = sh(qengine, ve, "LD_LIBRARY_PATH=/usr/local/lib btrfs subvolume create /root/nest || mkdir /root/nest; "
                        "dd if=/dev/zero of=/root/nest/fill bs=1M count=150")
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr

    assert disk_used(qengine, ve) <= limit + MARGIN
    assert qengine.storage.nested_subvolumes() == []
    assert pool_used(qengine) - pool0 <= HEADROOM + POOL_MARGIN


@pytest.mark.root
def test_it_turns_reflinks_into_real_copies_that_count(qengine, ve):
    limit = qengine.usage(ve)["disk_limit_bytes"]
    pool0 = pool_used(qengine)
    got = attack(qengine, ve)
    for name in ("clone", "clonerange", "dedupe"):
        assert got[name] == errno.EOPNOTSUPP and got[f"{name}-hi"] == errno.EOPNOTSUPP, got
    assert got["copy_file_range"] == errno.ENOSYS, got

    r = sh(qengine, ve, "dd if=/dev/urandom of=/root/t/big bs=1M count=20 status=none && "
                        "cp --reflink=always /root/t/big /root/t/always")
    assert r.returncode != 0 and "Operation not supported" in r.stderr, r.stderr
    r = sh(qengine, ve, "cp --reflink=auto /root/t/big /root/t/auto && cmp /root/t/big /root/t/auto")
    assert r.returncode == 0, r.stderr

    # Six more copies would be 120 MiB of files in a VE allowed 60 MiB: the quota stops them.
    r = sh(qengine, ve, "for i in 1 2 3 4 5 6; do cp /root/t/big /root/t/copy$i || exit 1; done")
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr
    r = sh(qengine, ve, "dd if=/dev/zero of=/root/t/more bs=1M count=20")
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr

    # What the VE holds (apparent size of its files) is no more than its quota lets it write.
    held = int(subprocess.run(["du", "-sb", str(qengine.layout.private(ve) / "root/t")], capture_output=True,
                              text=True, check=True).stdout.split()[0])
    assert held <= HEADROOM + MARGIN, held
    assert disk_used(qengine, ve) <= limit + MARGIN
    assert pool_used(qengine) - pool0 <= HEADROOM + POOL_MARGIN


@pytest.mark.root
def test_it_reports_subvolumes_nested_in_a_ve_before_the_profile_existed(qengine, ve):
    # What a VE could make before this profile: the host makes one the same way, inside its tree.
    nest = qengine.layout.private(ve) / "root/old"
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(nest)], check=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={nest}/f", "bs=1M", "count=5", "status=none"], check=True)
    subprocess.run(["btrfs", "filesystem", "sync", str(qengine.layout.pool)], check=True)

    info = qengine.storage.pool_info()
    assert [n["path"] for n in info["nested_subvolumes"]] == [f"private/{ve}/root/old"]
    assert info["nested_subvolumes"][0]["referenced_bytes"] >= 5 * MiB
    assert "outside every VE's quota" in info["quota_problem"]
    out = subprocess.run([str(BIN / "vzctl"), "--root", str(qengine.layout.root), "pool", "info"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"nested subvolume private/{ve}/root/old (5.0M): outside every VE's quota" in out.stdout
    # (destroying the VE removes the nested subvolume with it: the fixture checks that it can)


@pytest.mark.root
def test_it_finds_rescans_and_reports_a_pool_whose_quota_data_is_inconsistent(full_engine, full_ve):
    # Only full qgroups can go inconsistent (and be rescanned); simple quotas count as they go.
    qengine, ve = full_engine, full_ve
    assert qengine.storage.pool_info()["quota_mode"] == "qgroup"
    pool = str(qengine.layout.pool)
    limit = qengine.usage(ve)["disk_limit_bytes"]
    # Break the accounting for real, the way it breaks on a real node: the VE sits in a higher-level
    # qgroup (an admin grouping VEs per customer), and then it is snapshotted. The kernel cannot
    # account the new snapshot quickly, marks the data inconsistent and stops counting writes.
    sid = accounting.subvolume_id(qengine.layout.private(ve))
    group = f"1/{ve}"
    subprocess.run(["btrfs", "qgroup", "create", group, pool], check=True)
    try:
        subprocess.run(["btrfs", "qgroup", "assign", "--no-rescan", f"0/{sid}", group, pool], check=True)
        subprocess.run(["btrfs", "quota", "rescan", "-w", pool], check=True, capture_output=True)
        assert qengine.storage.quota_consistent() is True
        qengine.snapshot(ve, "before")
        assert qengine.storage.quota_consistent() is False
        assert qengine.usage(ve)["disk_quota_consistent"] is False
        assert qengine.storage.pool_info()["quota_enforced"] is False

        # The attack this closes: with nothing counted, the VE writes twice its headroom.
        r = sh(qengine, ve, "for i in 1 2 3 4 5 6; do dd if=/dev/zero of=/root/over$i bs=1M count=20 "
                            "status=none || exit 1; sync; done")
        assert r.returncode == 0, r.stderr

        # Any engine operation (here: vzctl pool info) finds it, rescans and says so.
        out = subprocess.run([str(BIN / "vzctl"), "--root", str(qengine.layout.root), "pool", "info"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "quota: on, consistent, enforced" in out.stdout, out.stdout
        assert "quota last found inconsistent at" in out.stdout and "rescanned at" in out.stdout, out.stdout
        info = qengine.storage.pool_info()
        assert info["quota_consistent"] is True and info["quota_enforced"] is True
        assert info["quota_rescanned_at"] and info["quota_rescan_error"] is None
        assert qengine.usage(ve)["disk_quota_consistent"] is True

        # The rescan counted what was written meanwhile: the VE is over its limit and writes fail.
        assert disk_used(qengine, ve) > limit
        r = sh(qengine, ve, "dd if=/dev/zero of=/root/more bs=1M count=1")
        assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr
        # Once it frees that space, the quota holds again, commit after commit.
        r = sh(qengine, ve, "rm -f /root/over* /root/more; sync; for i in 1 2 3 4 5 6; do "
                            "dd if=/dev/zero of=/root/again$i bs=1M count=20 status=none || exit 1; sync; done")
        assert r.returncode != 0 and "Disk quota exceeded" in r.stderr, r.stderr
        assert disk_used(qengine, ve) <= limit + MARGIN
    finally:
        subprocess.run(["btrfs", "qgroup", "remove", "--no-rescan", f"0/{sid}", group, pool], capture_output=True)
        subprocess.run(["btrfs", "qgroup", "destroy", group, pool], capture_output=True)
        qengine.storage.check_quota()


@pytest.mark.root
def test_a_new_pool_has_simple_quotas_and_charges_a_ve_only_for_what_it_writes(qengine, ve):
    info = qengine.storage.pool_info()
    assert info["quota_mode"] == "squota" and info["quota_enforced"] is True, info
    out = subprocess.run([str(BIN / "vzctl"), "--root", str(qengine.layout.root), "pool", "info"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "quota mode: squota" in out.stdout, out.stdout + out.stderr

    # The template's files belong to the template's subvolume: the VE shares them for free.
    template = qengine.storage.quota(qengine.layout.template_root(TEMPLATE))[0]
    before = disk_used(qengine, ve)
    assert template > 50 * MiB and before < 4 * MiB, (template, before)
    r = sh(qengine, ve, "dd if=/dev/urandom of=/root/mine bs=1M count=20 status=none && sync")
    assert r.returncode == 0, r.stderr
    grown = disk_used(qengine, ve) - before
    assert 20 * MiB <= grown <= 20 * MiB + MARGIN, grown

    # All VEs' usage comes from one quota-tree search; it agrees with the VE's own sysfs files.
    one = accounting.disk_usage(accounting.qgroups_dir(qengine.layout.pool), qengine.layout.private(ve))
    got = next(f for f in qengine.features if isinstance(f, ResourcesFeature)).usage_all()[ve]
    assert (got["disk_bytes"], got["disk_limit_bytes"]) == one
    assert one[1] == qengine.usage(ve)["disk_limit_bytes"] and one[0] == before + grown


@pytest.mark.root
def test_a_destroyed_ves_qgroup_goes_once_the_cleaner_freed_its_data(qengine):
    ctid = next(_ctids)
    qengine.create(ctid, TEMPLATE, hostname=f"q{ctid}")
    try:
        private = qengine.layout.private(ctid)
        subprocess.run(["dd", "if=/dev/urandom", f"of={private}/root/data", "bs=1M", "count=8", "status=none"],
                       check=True)
        sid = accounting.subvolume_id(private)
        qengine.storage.sync()
        assert btrfs.qgroup_usage_all(qengine.layout.pool)[sid][0] >= 8 * MiB
    finally:
        qengine.destroy(ctid)
    # Destroy did not wait for the cleaner: the qgroup is noted and goes at a later check.
    assert sid in qengine.storage._read_stale() or sid not in btrfs.qgroup_usage_all(qengine.layout.pool)
    for _ in range(120):
        qengine.storage.sync()
        qengine.storage.check_quota()
        if sid not in btrfs.qgroup_usage_all(qengine.layout.pool):
            break
        time.sleep(0.5)
    assert sid not in btrfs.qgroup_usage_all(qengine.layout.pool)
    assert sid not in qengine.storage._read_stale()
    assert qengine.storage.pool_info()["stale_qgroups"] == 0
