"""Host-side writes into a VE's files never follow a symlink planted by the VE's root."""

import os

import pytest

from vzengine import rootfs


def test_it_writes_and_reads_files(tmp_path):
    rootfs.write_file(tmp_path, "etc/hostname", "web1\n", mode=0o644, uid=os.getuid(), gid=os.getgid())
    assert rootfs.read_file(tmp_path, "etc/hostname") == b"web1\n"
    assert (tmp_path / "etc/hostname").stat().st_mode & 0o777 == 0o644


def test_it_refuses_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    ve = tmp_path / "ve"
    ve.mkdir()
    (ve / "etc").symlink_to(outside)
    with pytest.raises(rootfs.UnsafePath):
        rootfs.write_file(ve, "etc/shadow", "x", uid=os.getuid(), gid=os.getgid())
    assert list(outside.iterdir()) == []


def test_it_replaces_a_symlinked_file_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "host-secret"
    target.write_text("host data")
    ve = tmp_path / "ve"
    (ve / "etc").mkdir(parents=True)
    (ve / "etc/shadow").symlink_to(target)
    with pytest.raises(rootfs.UnsafePath):
        rootfs.read_file(ve, "etc/shadow")
    rootfs.write_file(ve, "etc/shadow", "new", uid=os.getuid(), gid=os.getgid())
    assert target.read_text() == "host data"
    assert not (ve / "etc/shadow").is_symlink()


def test_it_refuses_dot_dot(tmp_path):
    with pytest.raises(rootfs.UnsafePath):
        rootfs.write_file(tmp_path, "etc/../../x", "x", uid=os.getuid(), gid=os.getgid())
