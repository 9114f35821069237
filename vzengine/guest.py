"""Files the host writes inside a stopped VE's root: its identity, hostname, resolver and passwords.

Every write goes through rootfs.py (no symlink inside the VE is followed) and is owned by ``uid``,
the host uid that stands for the VE's root in its stored files (IDMAP_BASE). Nothing here runs a
VE or knows the engine: create, clone, reinstall, set and rescue call these on a root path.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from . import rootfs, validate
from .errors import NotFound
from .run import run

# Run inside a running VE, as OpenVZ's vzctl does, to create a user the VE does not have yet.
ADD_USER_SCRIPT = """
if command -v useradd >/dev/null; then exec useradd -m -s /bin/bash "$1"
elif command -v adduser >/dev/null; then exec adduser -D "$1"
else exit 127; fi
"""


def set_identity(root: Path, hostname: str, uid: int) -> None:
    """Give a new VE a machine-id and SSH host keys of its own."""
    rootfs.write_file(root, "etc/machine-id", secrets.token_hex(16) + "\n", mode=0o444, uid=uid, gid=uid)
    if rootfs.file_owner(root, "var/lib/dbus") is not None:
        rootfs.remove_file(root, "var/lib/dbus/machine-id")
    if rootfs.file_owner(root, "etc/ssh") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        # No RSA key: it costs ~0.5 s of CPU per VE and every current client speaks ed25519.
        for kind in ("ed25519", "ecdsa"):
            key = Path(tmp, f"ssh_host_{kind}_key")
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{hostname}", "-f", str(key)],
                what="generate SSH host keys")
            rootfs.write_file(root, f"etc/ssh/{key.name}", key.read_bytes(), mode=0o600, uid=uid, gid=uid)
            rootfs.write_file(root, f"etc/ssh/{key.name}.pub", Path(f"{key}.pub").read_bytes(),
                              mode=0o644, uid=uid, gid=uid)


def write_hostname(root: Path, hostname: str, uid: int) -> None:
    """Write /etc/hostname and the 127.0.1.1 line of /etc/hosts."""
    # Read first: a refused read (a FIFO, a link out of the VE) must leave /etc/hostname as it was.
    hosts = (rootfs.read_file(root, "etc/hosts") or b"").decode(errors="replace").splitlines()
    rootfs.write_file(root, "etc/hostname", hostname + "\n", uid=uid, gid=uid)
    short = hostname.split(".")[0]
    entry = f"127.0.1.1\t{hostname}" + (f" {short}" if short != hostname else "")
    hosts = [ln for ln in hosts if not ln.startswith("127.0.1.1")]
    hosts.insert(1 if hosts else 0, entry)
    rootfs.write_file(root, "etc/hosts", "\n".join(hosts) + "\n", uid=uid, gid=uid)


def write_resolv(root: Path, nameservers: list[str], search: str, uid: int) -> None:
    """Write /etc/resolv.conf with these name servers and search domain."""
    text = "# written by vzpanel (vzctl set --nameserver)\n"
    if search:
        text += f"search {search}\n"
    text += "".join(f"nameserver {n}\n" for n in nameservers)
    rootfs.write_file(root, "etc/resolv.conf", text, uid=uid, gid=uid)


def set_password(root: Path, user: str, password: str, uid: int) -> None:
    """Set ``user``'s password in the VE's /etc/shadow from the host (no symlink followed)."""
    validate.username(user)
    shadow = rootfs.read_file(root, "etc/shadow")
    if shadow is None:
        raise NotFound("the VE has no /etc/shadow")
    hashed = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                 what="hash the password").stdout.strip()
    lines = shadow.decode(errors="replace").splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 2:
            fields[1] = hashed
            if len(fields) > 2:
                fields[2] = str(int(time.time() // 86400))
            lines[i] = ":".join(fields)
            break
    else:
        raise NotFound(f"user {user} does not exist in the VE; start the VE to have it created")
    write_shadow(root, lines, uid)


def write_shadow(root: Path, lines: list[str], uid: int) -> None:
    """Write /etc/shadow, keeping the owner and mode it has (root:root 0640 for a new one)."""
    owner = rootfs.file_owner(root, "etc/shadow")
    fuid, fgid, mode = owner if owner else (uid, uid, 0o640)
    rootfs.write_file(root, "etc/shadow", "\n".join(lines) + "\n", mode=mode, uid=fuid, gid=fgid)
