"""Issue 15: users keep public SSH keys; bad ones are refused in words; the engine writes them safely."""

from __future__ import annotations

import os
import subprocess

import pytest

from .hosting_helpers import keygen


def test_it_keeps_good_keys_of_each_kind(api_for, owner, tmp_path):
    api = api_for(owner)
    for kind, bits in (("ed25519", None), ("ecdsa", 256), ("rsa", 3072)):
        r = api.post("/api/ssh-keys/", {"name": kind, "key": keygen(tmp_path, kind, bits)}, format="json")
        assert r.status_code == 201, r.json()
        assert r.json()["fingerprint"].startswith("SHA256:")
    assert [k["name"] for k in api.get("/api/ssh-keys/").json()] == ["ed25519", "ecdsa", "rsa"]


@pytest.mark.parametrize("key, words", [
    ("", "Paste one public key line"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "Unknown key type"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
    ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== x", "is not a ssh-ed25519 key"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq\nssh-ed25519 AAAA", "one key per line"),
])
def test_it_refuses_bad_keys_in_words_and_keeps_nothing(api_for, client_for, owner, key, words):
    from vzpanel.accounts.models import SSHKey

    r = api_for(owner).post("/api/ssh-keys/", {"name": "bad", "key": key}, format="json")
    assert r.status_code == 400
    assert words in r.json()["detail"] or (not key and "key" in r.json()["detail"])
    r = client_for(owner).post("/ves/ssh-keys/", {"name": "bad", "key": key})
    assert r.status_code == 400
    assert not SSHKey.objects.exists()


def test_it_refuses_a_short_rsa_key_and_a_duplicate(api_for, owner, tmp_path):
    api = api_for(owner)
    r = api.post("/api/ssh-keys/", {"name": "old", "key": keygen(tmp_path, "rsa", 1024)}, format="json")
    assert r.status_code == 400 and "1024 bits" in r.json()["detail"]
    key = keygen(tmp_path, "ed25519")
    assert api.post("/api/ssh-keys/", {"name": "a", "key": key}, format="json").status_code == 201
    r = api.post("/api/ssh-keys/", {"name": "b", "key": key}, format="json")
    assert r.status_code == 400 and "already have this key" in r.json()["detail"]


def test_keys_are_each_users_own(api_for, client_for, owner, outsider, tmp_path):
    r = api_for(owner).post("/api/ssh-keys/", {"name": "mine", "key": keygen(tmp_path)}, format="json")
    pk = r.json()["id"]
    assert api_for(outsider).get("/api/ssh-keys/").json() == []
    assert api_for(outsider).delete(f"/api/ssh-keys/{pk}/").status_code == 404
    assert client_for(outsider).post(f"/ves/ssh-keys/{pk}/delete/").status_code == 404
    assert api_for(owner).delete(f"/api/ssh-keys/{pk}/").status_code == 204


def test_switching_password_login_off_without_keys_is_refused(api_for, owner, owner_ve):
    from vzpanel.tasks.models import Task

    r = api_for(owner).post(f"/api/ves/{owner_ve.ctid}/network/ssh-keys/", {"password_login": False}, format="json")
    assert r.status_code == 400 and "Add an SSH key" in r.json()["detail"]
    assert not Task.objects.exists()


def test_the_agent_refuses_bad_key_lines():
    from vzpanel.agent import ops

    o = ops.OPS["ssh_keys_set"]
    for bad in ({"ctid": 101, "keys": ["ssh-ed25519 AAAA\ncommand=x"], "password_login": True},
                {"ctid": 101, "keys": "ssh-ed25519 AAAA", "password_login": True},
                {"ctid": 101, "keys": [], "password_login": "no"}):
        with pytest.raises(ops.Invalid):
            ops.check_params(o, bad)
            o.run(None, **ops.check_params(o, bad))


@pytest.mark.root
def test_the_engine_writes_keys_without_following_links(engine, new_ctid, tmp_path):
    from vzengine import sshkeys
    from vzengine.errors import InvalidInput
    from vzengine.rootfs import UnsafePath

    ctid = new_ctid()
    engine.create(ctid, "tiny")
    private = engine.layout.private(ctid)
    key = keygen(tmp_path)
    (private / "etc/ssh").mkdir(parents=True, exist_ok=True)
    result = sshkeys.set_keys(engine, ctid, [key], password_login=False)
    assert result["keys"] == 1 and not result["reloaded"]
    st_dir, st_file = os.stat(private / "root/.ssh"), os.stat(private / "root/.ssh/authorized_keys")
    assert (st_dir.st_mode & 0o777, st_file.st_mode & 0o777) == (0o700, 0o600)
    assert st_file.st_uid == engine._base_uid()
    assert key in (private / "root/.ssh/authorized_keys").read_text()
    assert "PermitRootLogin prohibit-password" in (private / "etc/ssh/sshd_config.d/vzpanel.conf").read_text()
    sshkeys.set_keys(engine, ctid, [key], password_login=True)
    assert not (private / "etc/ssh/sshd_config.d/vzpanel.conf").exists()
    # the VE's root plants a link to the host's root: the write is refused, the host untouched
    victim = tmp_path / "host-root"
    victim.mkdir()
    subprocess.run(["rm", "-rf", str(private / "root/.ssh")], check=True)
    os.symlink(victim, private / "root/.ssh")
    with pytest.raises(UnsafePath):
        sshkeys.set_keys(engine, ctid, [key], password_login=True)
    assert list(victim.iterdir()) == []
    with pytest.raises(InvalidInput):
        sshkeys.set_keys(engine, ctid, ["ssh-ed25519 AAAA\nfrom=x"], password_login=True)
