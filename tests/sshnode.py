"""An SSH server of the test's own inside a second node (tests/twonode.py), for vzmigrate's tests and bench.

sshd runs inside the node's namespaces, listening on the node's link address only, with a host key
and an authorized key generated here; the client side gets an ssh config file of its own (host alias
``vzdst``, its own known_hosts). The host's sshd and root's keys and known_hosts are never touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
ALIAS = "vzdst"


@dataclass
class SSHNode:
    ssh_config: str  # reaches the node as ALIAS, as root, with the accepted key
    nokey_config: str  # the same with a key the node does not accept
    key: Path  # the accepted private key


def have_sshd() -> bool:
    return os.path.exists(SSHD)


def _client_config(path: Path, addr: str, key: Path, known: Path) -> str:
    path.write_text(f"Host {ALIAS}\n  HostName {addr}\nHost *\n  User root\n  IdentityFile {key}\n"
                    f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
                    "  StrictHostKeyChecking yes\n  ConnectTimeout 5\n")
    return str(path)


def _wait_port(addr: str, port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not listen on {addr}:{port}")
        time.sleep(0.1)


@contextlib.contextmanager
def ssh_node(ns, d: Path):
    """Start sshd in node ``ns`` (a twonode.NodeNamespace) with keys made in directory ``d``; yield an
    SSHNode. The node's cleanup ends sshd (by its pid); /run/sshd is removed if it was made here."""
    for name in ("host_key", "id_ed25519", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vztest-{name}", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    made_privsep = not os.path.isdir("/run/sshd")  # sshd's privilege separation directory must exist
    if made_privsep:
        os.mkdir("/run/sshd", 0o755)
    try:
        addr = ns.node_addr
        (d / "sshd_config").write_text(
            f"ListenAddress {addr}\nPort 22\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PrintMotd no\nMaxSessions 50\n")
        (d / "known_hosts").write_text(f"{addr} {(d / 'host_key.pub').read_text()}")
        proc = ns.start([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], d / "sshd.log")
        try:
            _wait_port(addr, 22)
            yield SSHNode(ssh_config=_client_config(d / "ssh_config", addr, d / "id_ed25519", d / "known_hosts"),
                          nokey_config=_client_config(d / "nokey_config", addr, d / "other_key", d / "known_hosts"),
                          key=d / "id_ed25519")
        finally:
            ns.stop(proc)
    finally:
        if made_privsep:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")
