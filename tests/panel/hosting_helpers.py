"""Helpers of the hosting tests (addresses, SSH keys, firewall): pools, keys, and a client network namespace
that reaches VEs for real. Shared by test_hosting_addresses.py, test_ssh_keys.py and test_hosting_browser.py."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time

from tests.conftest import free_test_net

TEMPLATE = "debian-12-sysv"  # full Debian with OpenSSH that boots in about a second


def pool(node, name, network, kind="public", **kw):
    """Make an IP pool of node through the model's own checks."""
    from vzpanel.nodes.models import IPPool

    p = IPPool(node=node, name=name, network=network, kind=kind, **kw)
    p.full_clean()
    p.save()
    return p


def keygen(tmp_path, kind="ed25519", bits=None, name="id") -> str:
    """Make an SSH key pair in tmp_path (private key at ``tmp_path/<name>-<kind>``); return the public line."""
    path = tmp_path / f"{name}-{kind}"
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "me@laptop", "-f", str(path)]
    if bits:
        argv[4:4] = ["-b", str(bits)]
    subprocess.run(argv, check=True)
    return (tmp_path / f"{name}-{kind}.pub").read_text().strip()


def debian_template(node):
    """Tell the panel that node has the Debian template the hosting tests boot."""
    from vzpanel.nodes.models import Template

    Template.objects.get_or_create(node=node, name=TEMPLATE, defaults={"built": True})


@contextlib.contextmanager
def client_namespace():
    """A network namespace linked to the host by a veth on a free test network; yields (run, host address).

    ``run(*argv)`` runs a command inside it; the host address is the host's end of the link, where port
    forwards answer."""
    link = free_test_net()
    tag = secrets.token_hex(3)
    ns, host_if = f"vzt-{tag}", f"tst{tag}"
    sh = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{link.ip(1)}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{link.ip(2)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", link.ip(1))

        def run(*argv, timeout=30):
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                                  timeout=timeout)

        yield run, link.ip(1)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# One ICMP echo, as `ping -c 1` does (the host has no ping): exit 0 when the address answers within 2 s.
PING = """
import socket, struct, sys, time
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
body = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"vzpanel"
csum = sum(struct.unpack("!%dH" % (len(body) // 2), body[: len(body) // 2 * 2])) + (body[-1] << 8 if len(body) % 2 else 0)
csum = (csum >> 16) + (csum & 0xFFFF); csum = ~(csum + (csum >> 16)) & 0xFFFF
s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (dst, 0))
end = time.time() + 2
while time.time() < end:
    data, (src, _) = s.recvfrom(2048)
    if src == dst and data[20] == 0:
        sys.exit(0)
sys.exit(1)
"""

# Connect to ADDRESS PORT and print the first line the server sends (an SSH banner); exit 1 when nothing
# answers within the timeout (a dropped SYN), 2 when the connection is refused.
BANNER = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except ConnectionRefusedError:
    sys.exit(2)
except OSError:
    sys.exit(1)
s.settimeout(float(sys.argv[3]))
print(s.recv(200).decode(errors="replace").strip())
"""


def banner(run, address: str, port: int, timeout: float = 3) -> str | None:
    """The first line a TCP server at address:port sends to the namespace, or None when it does not answer."""
    r = run("python3", "-c", BANNER, address, str(port), str(timeout), timeout=timeout + 20)
    return r.stdout.strip() if r.returncode == 0 else None


def wait_ok(run, argv, tries=40):
    """Run argv in the namespace until it succeeds (a VE's service may still be starting); return the last try."""
    for _ in range(tries):
        r = run(*argv)
        if r.returncode == 0:
            return r
        time.sleep(0.5)
    return r


def ssh_argv(key, port: int, host: str, *options: str) -> list[str]:
    """An ssh command line that logs in with key only, never asks anything and trusts the VE's new host key."""
    return ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", *options, "-p", str(port),
            f"root@{host}"]


def port_free(port: int) -> bool:
    """Whether nothing on the host listens on TCP port (so a test can forward it)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
