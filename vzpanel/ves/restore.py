"""A backup restored as a new VE: under its own CTID (a destroyed VE brought back) or another."""

import ipaddress

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from vzpanel.audit import log as audit
from vzpanel.tasks import queue
from vzpanel.tasks.models import Task

from .errors import ActionRefused, Forbidden, InvalidRequest, QuotaExceeded
from .guards import check_quotas, new_task, refuse_if_locked
from .models import CTID_MAX, CTID_MIN, VE, Backup
from .storage import RESTORE_NEW
from .validate import clean_hostname


def clean_new_ctid(value) -> int:
    """Return value as a CTID no live VE has, or raise InvalidRequest saying what is wrong."""
    from .services import next_ctid  # create_ve's, which imports this module

    try:
        ctid = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidRequest(f"A CTID is a whole number from {CTID_MIN} to {CTID_MAX} (got {value!r}).") from None
    if not CTID_MIN <= ctid <= CTID_MAX:
        raise InvalidRequest(f"CTID {ctid} is out of range: a CTID is from {CTID_MIN} to {CTID_MAX}.")
    if VE.objects.live().filter(ctid=ctid).exists():
        raise InvalidRequest(f"CTID {ctid} is taken by a VE; leave the CTID empty for the next free one "
                             f"({next_ctid()}).")
    return ctid


def check_ve_room(owner, *, you: bool) -> None:
    """Refuse (in words) a VE beyond owner's plan; you: the message speaks to the owner."""
    plan = owner.plan
    who, has = ("You have", "you have") if you else (f"{owner.get_username()} has", "they have")
    if plan is None:
        raise QuotaExceeded(f"{who} no plan, so no VE can be restored for {'you' if you else 'them'}. "
                            + ("Ask an admin to assign one." if you else "Assign one, or tick “beyond the plan”."))
    have = VE.objects.live().filter(owner=owner).count()
    if have >= plan.max_ves:
        raise QuotaExceeded(
            f"{'Your' if you else 'The'} plan {plan.name} {'' if you else f'of {owner.get_username()} '}allows "
            f"{plan.max_ves} VE(s) and {has} {have}. "
            + ("Destroy one or ask an admin for a bigger plan." if you else "Tick “beyond the plan” to restore anyway.")
        )


def restore_as_new(user, backup: Backup, *, owner=None, ctid=None, hostname: str = "", start: bool = True,
                   beyond_plan: bool = False, request=None, ip=None) -> Task:
    """Queue restoring backup (which user may already see) as a new VE; return the Task (its VE is the new one).

    Admins: any backup, any active owner (default: the backup's VE's owner, also a destroyed VE's former
    owner), any free CTID (default: the next one); the owner's plan must have room unless beyond_plan.
    Others: backups of their own VEs only, as a VE of their own, within their plan, under the next CTID.
    The new VE gets the owner's plan limits. Under the backup's own CTID (a destroyed VE brought back) it keeps
    its host name, identity and addresses (those still free); under any other it gets a new host name
    (default ve<ctid>), machine-id, SSH host keys and addresses from the pool (tasks/jobs.py do_restore_new).
    """
    from .services import next_ctid  # create_ve's, which imports this module

    source = backup.ve
    locked = refuse_if_locked(user, source, RESTORE_NEW)  # a locked VE's files do not come back as a new VE
    if locked:
        raise ActionRefused(locked)
    admin = user.is_panel_admin
    if not admin:
        if source.owner_id != user.pk:
            raise Forbidden(f"Only the owner of VE {source.ctid} or an admin can restore its backups as a new VE.")
        if owner is not None and owner != user:
            raise InvalidRequest("Only admins can restore a backup as a VE of another user.")
        if ctid not in (None, ""):
            raise InvalidRequest("Only admins choose the CTID; leave it out for the next free one.")
        if beyond_plan:
            raise InvalidRequest("Only admins can restore a VE beyond a plan.")
        owner = user
    if backup.is_deleted:
        raise ActionRefused(f"Backup {backup.pk} of VE {backup.ctid} was already deleted "
                            f"({backup.deleted_at:%Y-%m-%d %H:%M}); it cannot be restored.")
    deleting = Task.objects.active().filter(action=Task.Action.BACKUP_DELETE, params__backup=backup.pk).first()
    if deleting is not None:
        raise ActionRefused(f"Backup {backup.pk} of VE {backup.ctid} is being deleted (task {deleting.pk}).")
    if owner is None:
        owner = source.owner
        if owner is None:
            raise InvalidRequest(f"VE {backup.ctid} has no owner any more: name the user the new VE is for.")
    if not owner.is_active:
        raise InvalidRequest(f"User {owner.get_username()} is disabled: a VE cannot be restored for them.")
    hostname = clean_hostname(hostname) if hostname else ""
    wanted = clean_new_ctid(ctid) if ctid not in (None, "") else None
    if wanted == backup.ctid and source.is_live:
        raise InvalidRequest(f"VE {backup.ctid} still exists: a backup restored as a new VE needs a CTID of its own.")
    plan = owner.plan
    if plan is not None and backup.data_bytes and backup.data_bytes > plan.disk_gb * (1 << 30):
        raise InvalidRequest(f"Backup {backup.pk} holds {backup.data_bytes / (1 << 30):.1f} GB of files; plan "
                             f"{plan.name} gives a VE {plan.disk_gb} GB of disk.")
    for attempt in range(5):
        try:
            with transaction.atomic():
                # as in create_ve: serialise quota checks per owner
                get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
                if not (admin and beyond_plan):
                    check_ve_room(owner, you=owner == user)
                check_quotas("new_ve", owner=owner, plan=plan)
                new_ctid = wanted or next_ctid()
                same = new_ctid == backup.ctid
                ve = VE.objects.create(
                    ctid=new_ctid, node=backup.node, owner=owner, status=VE.Status.CREATING,
                    hostname=hostname or (source.hostname if same else f"ve{new_ctid}"),
                    ostemplate=source.ostemplate, limits=plan.limits() if plan else {},
                )
                params = {"backup": backup.pk, "source": backup.ctid, "hostname": ve.hostname, "start": bool(start),
                          # how many addresses of each kind the source had: the new VE gets as many from the pool
                          "addresses": address_counts(source.ip_addresses)}
                detail = (f"backup {backup.pk} of VE {backup.ctid} ({'destroyed' if not source.is_live else 'live'}"
                          f", {backup.created_at:%Y-%m-%d %H:%M:%S}), owner {owner.get_username()}"
                          + (", beyond plan" if admin and beyond_plan else ""))
                task = new_task(user, ve, RESTORE_NEW, params, ip, detail, request)
                audit.record("ve.backup_restore_new", user=user, request=request, ve=source, ip=ip,
                             detail=f"backup {backup.pk} restored as new VE {new_ctid} (task {task.pk})")
                queue.enqueue_on_commit(task)
                return task
        except IntegrityError:
            if wanted is not None:
                raise InvalidRequest(f"CTID {wanted} was just taken by another VE; choose another.") from None
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def address_counts(addresses) -> dict:
    """How many IPv4 and IPv6 addresses are in a VE's list (as stored on its row)."""
    counts = {"4": 0, "6": 0}
    for value in addresses or []:
        try:
            counts[str(ipaddress.ip_address(str(value).split("/")[0]).version)] += 1
        except ValueError:
            continue
    return counts
