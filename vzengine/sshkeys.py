"""Root's SSH keys in a VE, and whether sshd takes passwords: written from the host, no link followed.

``set_keys`` replaces ``/root/.ssh/authorized_keys`` (dir 0700, file 0600, owned by the VE's root) and
writes ``/etc/ssh/sshd_config.d/vzpanel.conf`` with ``PermitRootLogin prohibit-password`` and
``PasswordAuthentication no`` when password log-in is off (the drop-in is removed when it is on again).
Every file goes through rootfs.write_file, which opens each path component without following links. A
running VE's sshd is told to reload (SIGHUP to the pid in /run/sshd.pid, through lxc-attach; nothing is
left running inside, so a later CRIU dump is not blocked); a stopped VE's sshd reads it at its next start.
Debian 12's sshd_config includes sshd_config.d/*.conf first, so the drop-in wins over the main file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from . import rootfs, validate
from .errors import InvalidInput

if TYPE_CHECKING:
    from .engine import Engine

MAX_KEYS = 32
MAX_KEY_LINE = 16384  # an RSA-16384 public key is about 2.8 kB; options and a comment fit easily
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
KEY_RE = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,3})(?: (?P<comment>[ -~]{0,200}))?")
DROPIN = "etc/ssh/sshd_config.d/vzpanel.conf"
RELOAD = "[ -r /run/sshd.pid ] && kill -HUP \"$(cat /run/sshd.pid)\" 2>/dev/null; exit 0"


def check_key(line: str) -> str:
    """Return line as one clean public key line (type, base64, optional comment), or raise InvalidInput."""
    if not isinstance(line, str) or len(line) > MAX_KEY_LINE:
        raise InvalidInput(f"an SSH key line is at most {MAX_KEY_LINE} characters")
    line = " ".join(line.strip().split(" "))
    m = KEY_RE.fullmatch(line)
    if m is None or m.group("type") not in KEY_TYPES:
        raise InvalidInput(f"{line[:40]!r} is not a public key line (TYPE BASE64 [COMMENT], TYPE one of "
                           f"{', '.join(KEY_TYPES[:5])})")
    return line


def set_keys(engine: Engine, ctid: int | str, keys: list[str], password_login: bool) -> dict:
    """Make ``keys`` root's authorized_keys in VE ctid and switch password log-in over SSH on or off."""
    ctid = validate.ctid(ctid)
    if len(keys) > MAX_KEYS:
        raise InvalidInput(f"at most {MAX_KEYS} SSH keys per VE")
    lines = [check_key(k) for k in keys]
    conf = engine.config(ctid)
    base = engine._base_uid()
    private = engine.layout.private(conf.ctid)
    with engine._lock(conf.ctid, "ssh-keys"):
        text = "# written by vzpanel: the keys of the VE's owner\n" + "".join(f"{k}\n" for k in lines)
        rootfs.write_file(private, "root/.ssh/authorized_keys", text, mode=0o600, uid=base, gid=base)
        # write_file makes a missing .ssh 0755; sshd's StrictModes wants it no wider than 0755, we want 0700.
        _chmod_dir(private, "root/.ssh", 0o700)
        has_sshd = rootfs.file_owner(private, "etc/ssh") is not None
        if has_sshd:
            if password_login:
                rootfs.remove_file(private, DROPIN)
            else:
                rootfs.write_file(private, DROPIN, "# written by vzpanel: keys only for SSH log-in\n"
                                  "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                                  "KbdInteractiveAuthentication no\n", mode=0o644, uid=base, gid=base)
        reloaded = False
        if has_sshd and engine.is_running(conf.ctid):
            reloaded = engine.lxc.attach(conf.ctid, ["/bin/sh", "-c", RELOAD], timeout=20).returncode == 0
    return {"ctid": conf.ctid, "keys": len(lines), "password_login": password_login, "sshd": has_sshd,
            "reloaded": reloaded}


def _chmod_dir(root: Path, rel: str, mode: int) -> None:
    """chmod directory /rel inside the VE without following a link on the way."""
    import os

    parts = [p for p in rel.split("/") if p]
    with rootfs._dir_fd(root, parts) as fd:
        os.fchmod(fd, mode)
