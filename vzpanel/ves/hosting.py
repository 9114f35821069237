"""Hosting customers' VE networking and SSH access, shared by the pages and the API.

Addresses come from the IP pools of the VE's node (nodes.pools): at create, as many IPv4 and IPv6 as the
owner's plan says; later, customers add or remove them within the plan, each a task that sets them live
(``vzctl set --ipadd/--ipdel``). A VE whose first IPv4 address is from a private pool gets an SSH port
forward from VZPANEL_SSH_PORTS. SSH keys are the owner's (accounts.SSHKey); a task writes them into root's
authorized_keys and switches password log-in over SSH on or off.
"""

from __future__ import annotations

import base64
import hashlib
import re

from django.db import IntegrityError, transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from vzpanel.accounts.models import SSHKey
from vzpanel.nodes import pools
from vzpanel.nodes.models import IPAddress
from vzpanel.tasks import queue
from vzpanel.tasks.models import Task

from .models import VE
from .services import (
    ActionRefused,
    InvalidRequest,
    QuotaExceeded,
    _new_task,
    busy_message,
    check_quotas,
    plan_of,
    refuse_if_locked,
)

LIVE = {VE.Status.RUNNING, VE.Status.STOPPED}
MAX_KEYS = 32
MAX_KEY_LINE = 16384
KEY_TYPES = {"ssh-ed25519": 32 * 8, "ecdsa-sha2-nistp256": 256, "ecdsa-sha2-nistp384": 384,
             "ecdsa-sha2-nistp521": 521, "ssh-rsa": 2048, "sk-ssh-ed25519@openssh.com": 256,
             "sk-ecdsa-sha2-nistp256@openssh.com": 256}
RDNS_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


# --- releasing: a destroyed VE's addresses go back to the pool -----------------------------------------

@receiver(post_save, sender=VE, dispatch_uid="hosting-release-addresses")
def _release(sender, instance: VE, **kwargs):
    if instance.status == VE.Status.DESTROYED:
        for row in IPAddress.objects.filter(ve=instance):
            pools.reverse_dns_changed.send(IPAddress, address=row, name="")
        IPAddress.objects.filter(ve=instance).delete()


def ordered_pools(node, version: int) -> list:
    """The node's pools of one family, public ones first."""
    return sorted(node.ip_pools.filter(version=version), key=lambda p: (p.kind != p.Kind.PUBLIC, p.pk))


# --- create ------------------------------------------------------------------------------------------

def assign_on_create(ve: VE, plan) -> dict:
    """Take the plan's addresses for a new VE from its node's pools (rows made in the caller's transaction);
    return the create task's network parameters. A node without a pool of a family gives none of it."""
    want = {4: plan.ipv4_addresses if plan else 1, 6: plan.ipv6_addresses if plan else 0}
    rows: list[IPAddress] = []
    for version in (4, 6):
        left = want[version]
        for pool in ordered_pools(ve.node, version):
            if left <= 0:
                break
            for addr in pools.free_addresses(pool, left):
                rows.append(IPAddress.objects.create(pool=pool, address=addr, ve=ve))
                left -= 1
        if left > 0 and ve.node.ip_pools.filter(version=version).exists():
            raise QuotaExceeded(f"Node {ve.node.name}'s IPv{version} pools have no free address left; ask an "
                                "admin to add a pool.")
    params: dict = {}
    if rows:
        params["ipadd"] = [r.address for r in rows]
        first4 = next((r for r in rows if r.pool.version == 4), None)
        servers = [s for r in rows for s in r.pool.nameserver_list]
        if servers:
            params["nameserver"] = list(dict.fromkeys(servers))[:4]
        if first4 is not None and first4.pool.kind == first4.pool.Kind.PRIVATE:
            first4.ssh_port = pools.free_ssh_port()
            first4.save(update_fields=["ssh_port"])
            params["portfwd"] = [f"tcp:{first4.ssh_port}:22"]
    keys = list(SSHKey.objects.filter(user=ve.owner).values_list("key", flat=True)) if ve.owner_id else []
    if keys:
        params["ssh_keys"] = keys
    return params


def engine_net(params: dict) -> dict:
    """The network parameters of a create task, as the engine takes them."""
    return {k: params[k] for k in ("ipadd", "portfwd", "nameserver") if params.get(k)}


# --- what the VE has ------------------------------------------------------------------------------------

def network_of(ve: VE) -> dict:
    """The VE's addresses (with pool, kind, reverse DNS), its SSH port and what its plan allows."""
    rows = list(IPAddress.objects.filter(ve=ve).select_related("pool"))
    plan = plan_of(ve)
    ssh = next((r.ssh_port for r in rows if r.ssh_port), None)
    last = ve.tasks.filter(action=Task.Action.SSH_KEYS, status=Task.Status.COMPLETED).order_by("-pk").first()
    return {
        "addresses": [{"address": r.address, "version": r.pool.version, "pool": r.pool.name, "kind": r.pool.kind,
                       "gateway": r.pool.gateway, "reverse_dns": r.reverse_dns, "ssh_port": r.ssh_port}
                      for r in rows],
        "ssh_port": ssh,
        "allowed": {"ipv4": plan.ipv4_addresses if plan else None, "ipv6": plan.ipv6_addresses if plan else None},
        "pools": [{"name": p.name, "network": p.network, "version": p.version, "kind": p.kind}
                  for p in ve.node.ip_pools.all()],
        "password_login": last.params.get("password_login", True) if last else True,
    }


# --- adding and removing addresses ------------------------------------------------------------------------

def _check_live(ve: VE) -> None:
    if ve.status not in LIVE:
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; its addresses can be changed when it is running or "
                            "stopped.")
    if ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(busy_message(ve))


def add_address(user, ve: VE, *, version=4, address: str = "", request=None) -> Task:
    """Queue giving ve one more address (a named one of its node's pools, or the next free one)."""
    _check_live(ve)
    try:
        if address:
            pool = pools.find_pool(ve.node, address)
            address = pools.check_address(pool, address)
            version = pool.version
        if version not in (4, 6, "4", "6"):
            raise InvalidRequest("version is 4 or 6.")
        version = int(version)
        plan = plan_of(ve)
        allowed = (plan.ipv4_addresses if version == 4 else plan.ipv6_addresses) if plan else 0
        have = IPAddress.objects.filter(ve=ve, pool__version=version).count()
        if not user.is_panel_admin and have >= allowed:
            raise QuotaExceeded(f"The plan {plan.name if plan else '(none)'} allows {allowed} IPv{version} "
                                f"address(es) per VE and VE {ve.ctid} has {have}. Remove one first or ask an "
                                "admin for a bigger plan.")
        with transaction.atomic():
            check_quotas("address", ve=ve, version=version)  # a reseller's customer: its quota too
            if address:
                if IPAddress.objects.filter(address=address).exists():
                    raise ActionRefused(f"{address} is already in use on node {ve.node.name}.")
            else:
                for pool in ordered_pools(ve.node, version):
                    free = pools.free_addresses(pool, 1)
                    if free:
                        address = free[0]
                        break
                else:
                    raise ActionRefused(f"Node {ve.node.name} has no free IPv{version} address in its pools; ask "
                                        "an admin.")
                pool = pools.find_pool(ve.node, address)
            row = IPAddress.objects.create(pool=pool, address=address, ve=ve)
            task = _new_task(user, ve, Task.Action.ADDRESS_ADD, {"address": address, "row": row.pk}, None,
                             f"address {address}", request)
            queue.enqueue_on_commit(task)
    except pools.PoolError as exc:
        raise InvalidRequest(exc.message) from None
    except IntegrityError:
        raise ActionRefused(f"{address} is already in use on node {ve.node.name}.") from None
    return task


def remove_address(user, ve: VE, address: str, *, request=None) -> Task:
    """Queue taking address off ve (live)."""
    _check_live(ve)
    row = IPAddress.objects.filter(ve=ve, address=(address or "").strip()).first()
    if row is None:
        raise InvalidRequest(f"VE {ve.ctid} has no address {address!r}.")
    with transaction.atomic():
        task = _new_task(user, ve, Task.Action.ADDRESS_DEL, {"address": row.address, "ssh_port": row.ssh_port},
                         None, f"address {row.address}", request)
        queue.enqueue_on_commit(task)
    return task


def set_reverse_dns(user, ve: VE, address: str, name: str) -> IPAddress:
    """Store the reverse-DNS name of one of ve's addresses ("" clears it) and tell listeners."""
    locked = refuse_if_locked(user, ve, "reverse_dns")  # stored at once, not a task: the lock is checked here
    if locked:
        raise ActionRefused(locked)
    row = IPAddress.objects.filter(ve=ve, address=(address or "").strip()).first()
    if row is None:
        raise InvalidRequest(f"VE {ve.ctid} has no address {address!r}.")
    name = (name or "").strip().lower().rstrip(".")
    if name and not RDNS_RE.match(name):
        raise InvalidRequest(f"{name[:60]!r} is not a fully qualified host name (e.g. www.example.com).")
    row.reverse_dns = name
    row.save(update_fields=["reverse_dns"])
    pools.reverse_dns_changed.send(IPAddress, address=row, name=name)
    return row


# --- SSH keys -------------------------------------------------------------------------------------------

def parse_key(line: str) -> tuple[str, str]:
    """Return (clean key line, SHA256 fingerprint), or raise InvalidRequest saying what is wrong."""
    if not isinstance(line, str) or not line.strip():
        raise InvalidRequest("Paste one public key line, e.g. 'ssh-ed25519 AAAAC3... you@laptop'.")
    if len(line) > MAX_KEY_LINE:
        raise InvalidRequest(f"A public key line is at most {MAX_KEY_LINE} characters.")
    if "\n" in line.strip() or "\r" in line:
        raise InvalidRequest("Paste one key per line: add each key on its own.")
    if "PRIVATE KEY" in line:
        raise InvalidRequest("That is a private key: paste the public one (the .pub file), and keep the private "
                             "key secret.")
    parts = line.strip().split(None, 2)
    kind = parts[0]
    if kind not in KEY_TYPES:
        raise InvalidRequest(f"Unknown key type {kind[:40]!r}: use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or "
                             "ssh-rsa.")
    if len(parts) < 2:
        raise InvalidRequest("The key has no data after its type.")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InvalidRequest("The key's data is not valid base64.") from None
    # The blob starts with its own type as an SSH string: a key pasted with the wrong type is refused.
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if n <= 0 or blob[4:4 + n] != kind.encode():
        raise InvalidRequest(f"The key's data is not a {kind} key.")
    if kind == "ssh-rsa":
        e_len = int.from_bytes(blob[4 + n:8 + n], "big")
        m_at = 8 + n + e_len
        m_len = int.from_bytes(blob[m_at:m_at + 4], "big")
        modulus = blob[m_at + 4:m_at + 4 + m_len].lstrip(b"\0")
        if len(modulus) * 8 < 2048:
            raise InvalidRequest(f"This RSA key has {len(modulus) * 8} bits; use at least 2048 (or ssh-ed25519).")
    comment = parts[2].strip() if len(parts) > 2 else ""
    if comment and (len(comment) > 200 or not comment.isprintable()):
        raise InvalidRequest("The key's comment must be printable text of at most 200 characters.")
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return " ".join(x for x in (kind, parts[1], comment) if x), fp


def add_key(user, name: str, line: str) -> SSHKey:
    """Keep a public key in user's profile."""
    name = (name or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise InvalidRequest("Give the key a name of 1-64 printable characters (e.g. laptop).")
    key, fp = parse_key(line)
    if SSHKey.objects.filter(user=user).count() >= MAX_KEYS:
        raise QuotaExceeded(f"You can keep at most {MAX_KEYS} SSH keys; delete one first.")
    if SSHKey.objects.filter(user=user, fingerprint=fp).exists():
        raise InvalidRequest(f"You already have this key ({fp}).")
    return SSHKey.objects.create(user=user, name=name, key=key, fingerprint=fp)


def push_keys(user, ve: VE, *, password_login: bool = True, request=None) -> Task:
    """Queue putting the VE owner's keys into root's authorized_keys and setting password log-in over SSH."""
    _check_live(ve)
    keys = list(SSHKey.objects.filter(user=ve.owner or user).values_list("key", flat=True))
    if not keys and not password_login:
        raise InvalidRequest("Add an SSH key to your profile before switching password log-in off, or you "
                             "could not log in over SSH at all.")
    with transaction.atomic():
        task = _new_task(user, ve, Task.Action.SSH_KEYS, {"keys": keys, "password_login": bool(password_login)},
                         None, f"{len(keys)} key(s), password log-in {'on' if password_login else 'off'}", request)
        queue.enqueue_on_commit(task)
    return task
