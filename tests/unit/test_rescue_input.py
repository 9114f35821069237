"""Rescue mode's pure parts: which root password hash is copied from a VE's /etc/shadow (the customer's file,
untrusted), which rescue template a node uses, and which operations a VE in rescue refuses."""

from pathlib import Path

import pytest

from vzengine import rescue
from vzengine.layout import Layout


@pytest.mark.parametrize(("shadow", "copied"), [
    (b"root:$y$j9T$abc/def.$ghiJKL012:19000:0:99999:7:::\n", "$y$j9T$abc/def.$ghiJKL012"),
    (b"daemon:*:19000::::::\nroot:$6$salt$hash:1::::::\n", "$6$salt$hash"),
    (b"root:*:19000:0:99999:7:::\n", None),  # locked: the rescue system keeps its own (no password)
    (b"root::19000::::::\n", None),  # empty: never copied, it would open root without a password
    (b"root:!$6$salt$hash:19000::::::\n", None),  # locked with a hash behind it
    (b"root:$6$x\nPermitRootLogin yes:1::::::\n", "$6$x"),  # a line break cannot carry more in
    (b"root:$6$a b:1::::::\n", None),  # not crypt(3)'s alphabet
    (b"rootx:$6$salt$hash:1::::::\n", None),
    (b"\xff\xfe:garbage\n", None),
    (b"", None),
])
def test_it_copies_only_a_real_root_password_hash(shadow, copied):
    assert rescue._root_hash(shadow) == copied


def test_the_rescue_template_comes_from_the_environment_then_vz_conf_then_the_default(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("VZ_RESCUE_TEMPLATE", raising=False)
    assert rescue.default_template(Layout.load(tmp_path)) == "debian-12-sysv"
    (tmp_path / "vz.conf").write_text('RESCUE_TEMPLATE="tiny"\n')
    assert rescue.default_template(Layout.load(tmp_path)) == "tiny"
    monkeypatch.setenv("VZ_RESCUE_TEMPLATE", "lab-rescue")
    assert rescue.default_template(Layout.load(tmp_path)) == "lab-rescue"


def test_a_ve_in_rescue_refuses_what_would_boot_copy_or_replace_its_disk_and_allows_the_rest():
    assert {"start", "restart", "snapshot", "snapshot-switch", "backup", "reinstall", "suspend", "resume",
            "save as template", "restore", "clone", "identity"} <= set(rescue.REFUSED)
    for allowed in ("stop", "set", "destroy", "snapshot-delete", "ssh-keys", "rescue", "rescue-leave"):
        assert allowed not in rescue.REFUSED
