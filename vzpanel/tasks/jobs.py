"""What each task action does: the task worker's handlers, which reach the node's engine through its agent.

These run in the task worker (the unprivileged web user, like the web server); every engine call is a request
to the node agent (vzpanel.agent), the one door to root, which validates it again.
"""

import logging

from django.conf import settings

from vzpanel.agent.client import RemoteEngine, connect
from vzpanel.agent.errors import AgentError, NotFound
from vzpanel.ves import hosting  # also connects its signal: a destroyed VE's addresses go back to the pool
from vzpanel.ves.models import VE
from vzpanel.ves.storage_jobs import (  # registers the snapshot and backup handlers
    SNAPSHOT_TASKS,
    in_use,
    remove_backup,
    sync_snapshots,
)
from vzpanel.ves.sync import engine_limits, mark_destroyed, publish_ve, save_info

from . import actions
from .errors import TaskFailed
from .models import Task

log = logging.getLogger(__name__)


def engine(node_name: str) -> RemoteEngine:
    """Return the engine of the named node, reached through its agent."""
    return RemoteEngine(node_name, connect(settings.REDIS_URL))


def root_passwd(root_password):
    return [("root", root_password)] if root_password else None


def do_create(task, progress, eng, root_password=None):
    ve, params = task.ve, task.params
    info = eng.create(
        ve.ctid,
        params["ostemplate"],
        hostname=params.get("hostname") or None,
        userpasswd=root_passwd(root_password),
        progress=progress,
        **engine_limits(ve.limits or {}),
        **hosting.engine_net(params),
    )
    save_info(ve, info)
    if params.get("ssh_keys"):  # before the first start: sshd reads them as it starts
        eng.ssh_keys_set(ve.ctid, params["ssh_keys"], password_login=True)
    if params.get("start"):
        info = eng.start(ve.ctid, progress=progress)
        save_info(ve, info)
    return info.to_dict()


def do_start(task, progress, eng):
    """Start the VE; a suspended one is resumed with its processes (booted afresh only if that fails)."""
    ctid = task.ve.ctid
    if eng.is_suspended(ctid):
        try:
            eng.resume(ctid, progress=progress)
            return eng.status(ctid)
        except AgentError as exc:
            progress(50, f"VE {ctid} could not be resumed ({exc.message}); booting it afresh instead")
    return eng.start(ctid, progress=progress)


def do_stop(task, progress, eng):
    return eng.stop(task.ve.ctid, progress=progress)


def do_restart(task, progress, eng):
    return eng.restart(task.ve.ctid, progress=progress)


def do_reinstall(task, progress, eng, root_password=None):
    info = eng.reinstall(task.ve.ctid, ostemplate=task.params.get("ostemplate") or None, progress=progress)
    if root_password:
        info = eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)
    sync_snapshots(task.ve, eng)  # the engine keeps the old root as snapshot before-reinstall-<time>
    return info


def do_set_password(task, progress, eng, root_password=None):
    if not root_password:
        raise TaskFailed("No password was given.")
    return eng.set(task.ve.ctid, userpasswd=root_passwd(root_password), progress=progress)


def do_set_hostname(task, progress, eng):
    return eng.set(task.ve.ctid, hostname=task.params["hostname"], progress=progress)


def do_set_limits(task, progress, eng):
    """Set the VE's limits live (all or none: the engine undoes a half-applied change); store them if taken."""
    ve, limits = task.ve, task.params.get("limits")
    if not isinstance(limits, dict) or not limits:
        raise TaskFailed("The task names no limits to set.")
    if eng.is_suspended(ve.ctid):
        raise TaskFailed(f"VE {ve.ctid} is suspended; its limits can be changed once it runs again.")
    params = engine_limits(limits)
    progress(10, "Setting " + ", ".join(f"{name} {value}" for name, value in params.items()))
    info = eng.set(ve.ctid, save=True, progress=progress, **params)  # refusals raise VZError: the task fails
    ve.limits = dict(limits)
    ve.save(update_fields=["limits", "updated_at"])
    return info


def do_destroy(task, progress, eng):
    ve = task.ve
    eng.destroy(ve.ctid, progress=progress)  # its snapshots go with it
    mark_destroyed(ve)
    ve.snapshots.all().delete()
    deleted = []
    if task.params.get("delete_backups"):
        for backup in ve.backups.kept():
            if in_use(backup, progress):
                continue
            remove_backup(eng, backup, "with its VE")
            deleted.append(backup.pk)
        if deleted:
            progress(100, f"Deleted {len(deleted)} backup(s) of VE {ve.ctid}")
    elif ve.backups.kept().exists():
        progress(100, f"Kept {ve.backups.kept().count()} backup(s) of VE {ve.ctid} (admins can restore or delete them)")
    return {"ctid": ve.ctid, "destroyed": True, "backups_deleted": deleted}


# --- hosting: addresses and SSH keys (vzpanel.ves.hosting queues these) ------------------------------------


def do_address_add(task, progress, eng):
    """Add the address the panel reserved (its IPAddress row) to the VE, live; the row goes if that fails."""
    from vzpanel.nodes.models import IPAddress

    ve, address = task.ve, task.params["address"]
    try:
        info = eng.set(ve.ctid, ipadd=[address], save=True, progress=progress)
    except BaseException:
        IPAddress.objects.filter(pk=task.params.get("row"), ve=ve).delete()
        raise
    progress(100, f"VE {ve.ctid} has address {address}")
    return info


def do_address_del(task, progress, eng):
    """Take an address off the VE (live), with the SSH port forward it carried; then free its row."""
    from vzpanel.nodes.models import IPAddress

    ve, address, port = task.ve, task.params["address"], task.params.get("ssh_port")
    params = {"ipdel": [address]}
    if port:
        params["portfwd_del"] = [f"tcp:{port}:22"]
    info = eng.set(ve.ctid, save=True, progress=progress, **params)
    for row in IPAddress.objects.filter(ve=ve, address=address):
        hosting.pools.reverse_dns_changed.send(IPAddress, address=row, name="")
        row.delete()
    progress(100, f"Address {address} removed from VE {ve.ctid}")
    return info


def do_ssh_keys(task, progress, eng):
    ve, p = task.ve, task.params
    result = eng.ssh_keys_set(ve.ctid, p.get("keys") or [], password_login=bool(p.get("password_login", True)))
    progress(100, f"{result.get('keys')} key(s) in root's authorized_keys; password log-in over SSH "
                  f"{'on' if result.get('password_login') else 'off'}"
                  + ("" if result.get("reloaded") or not result.get("sshd") else " (sshd reads it at its next start)"))
    return result


def do_set_firewall(task, progress, eng):
    """Replace the VE's firewall (policy and rules), live where it runs; the engine undoes a half-applied change."""
    policy, rules = task.params["policy"], list(task.params.get("rules") or [])
    progress(10, f"Setting policy {policy} and {len(rules)} rule(s)")
    info = eng.firewall_set(task.ve.ctid, policy, rules, progress=progress)
    progress(100, f"VE {task.ve.ctid}'s firewall: policy {policy}, {len(rules)} rule(s)")
    return info


# --- rescue mode (vzengine/rescue.py): the VE boots a rescue system with its own root at /mnt -------------


def do_rescue(task, progress, eng):
    """Boot the VE into the node's rescue system (stopping it first); the engine undoes a half-done entry."""
    return eng.rescue_enter(task.ve.ctid, progress=progress)


def do_rescue_leave(task, progress, eng):
    """Stop the rescue system, remove its temporary root and boot the VE's own system (params.start, default on)."""
    return eng.rescue_leave(task.ve.ctid, start=bool(task.params.get("start", True)), progress=progress)


HANDLERS = {
    Task.Action.CREATE: do_create,
    Task.Action.START: do_start,
    Task.Action.STOP: do_stop,
    Task.Action.RESTART: do_restart,
    Task.Action.REINSTALL: do_reinstall,
    Task.Action.SET_PASSWORD: do_set_password,
    Task.Action.SET_HOSTNAME: do_set_hostname,
    Task.Action.DESTROY: do_destroy,
    Task.Action.SET_LIMITS: do_set_limits,
    Task.Action.ADDRESS_ADD: do_address_add,
    Task.Action.ADDRESS_DEL: do_address_del,
    Task.Action.SSH_KEYS: do_ssh_keys,
    Task.Action.SET_FIREWALL: do_set_firewall,
}
for _action, _handler in HANDLERS.items():
    actions.register(_action, _handler, creates_ve=_action == Task.Action.CREATE)
actions.register("rescue", do_rescue, label="boot into rescue")
actions.register("rescue_leave", do_rescue_leave, label="leave rescue")


def after_failure(task: Task) -> None:
    """Bring the VE row in line with the engine after a failed action (best effort)."""
    ve = task.ve
    if ve is None or not ve.is_live:
        return
    try:
        eng = engine(task.node.name)
        try:
            save_info(ve, eng.status(ve.ctid))
            if task.action in SNAPSHOT_TASKS:  # e.g. a snapshot deleted outside the panel: show what is there
                sync_snapshots(ve, eng)
        except NotFound:
            if task.action in actions.CREATES_VE:
                mark_destroyed(ve)  # never built: give the quota back
            else:
                ve.status = VE.Status.MISSING
                ve.save(update_fields=["status", "updated_at"])
                publish_ve(ve)
    except Exception:
        log.warning("could not refresh VE %s after task %s", ve.ctid, task.pk, exc_info=True)


