"""Provisioning for billing systems: a service (keyed by the billing system's id) is a customer's VE on a plan.

Every call goes through the panel's own paths (ves.services: create_ve, request_action, set_limits), as an
admin, so plans, addresses, keys, quotas and the audit log apply as for a click in the panel.

Idempotency (docs/billing.md): a create is the service's identity: the same external id with the same body
answers what the first create answered and changes nothing; with another body it is a 409 naming what
differs. Any other call repeats the service's last call when it is the same call with the same body (a retry),
and with an optional ``request_id`` it is keyed by (service, call, request_id) for good, where another body
is a 409 too. Only calls that succeeded are kept; a refused one changes nothing and may be sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from vzpanel.audit import log as audit
from vzpanel.plans.models import Plan
from vzpanel.tasks.models import Task
from vzpanel.ves import services as ve_services
from vzpanel.ves.hosting import network_of
from vzpanel.ves.models import VE
from vzpanel.ves.services import ActionRefused, InvalidRequest, NotFound, ServiceError

from .models import BillingCall, BillingService

CALLS = ("create", "suspend", "unsuspend", "change-plan", "terminate")
EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
SECRET_FIELDS = ("customer.password", "root_password")
BILLING_LOCK = "Suspended by billing"
DEFAULT_REASON = "non-payment"
USERNAME_RE = re.compile(r"[^a-z0-9._-]+")


class Conflict(ServiceError):
    """The same key (external id, or request_id) with another body: says what differs, per field."""

    status_code = 409

    def __init__(self, message: str, errors: dict[str, list[str]]):
        super().__init__(message)
        self.errors = errors


@dataclass
class Outcome:
    answer: dict
    status_code: int
    replayed: bool = False


# --- keys and bodies -----------------------------------------------------------------------------------------


def clean_external_id(value) -> str:
    value = str(value or "")
    if not EXTERNAL_ID_RE.match(value):
        raise InvalidRequest(f"An external id is 1 to 100 letters, digits, '.', '_', ':' or '-', starting with a "
                             f"letter or digit (got {value[:40]!r}).")
    return value


def hide(value: str) -> str:
    """A secret as kept for comparison: a keyed hash (the panel's secret key), never the secret."""
    digest = hmac.new(settings.SECRET_KEY.encode(), str(value).encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest[:32]}"


def stored_body(body: dict) -> dict:
    """body as kept in a call's record: secrets replaced by their keyed hashes."""
    out = {k: v for k, v in body.items()}
    if isinstance(out.get("customer"), dict):
        out["customer"] = dict(out["customer"])
        if out["customer"].get("password"):
            out["customer"]["password"] = hide(out["customer"]["password"])
    if out.get("root_password"):
        out["root_password"] = hide(out["root_password"])
    return out


def flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def differences(before: dict, now: dict) -> dict[str, list[str]]:
    """Each dotted field whose value differs between two stored bodies, and how (secrets: only that they do)."""
    a, b = flatten(before), flatten(now)
    missing = object()
    out = {}
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, missing), b.get(key, missing)
        if old == new:
            continue
        if key in SECRET_FIELDS:
            out[key] = ["differs from the first call (a secret: not shown)"]
        else:
            shown = ["(not sent)" if v is missing else repr(v) for v in (old, new)]
            out[key] = [f"was {shown[0]}, now {shown[1]}"]
    return out


def previous_call(service: BillingService | None, call: str, request_id: str, body: dict) -> BillingCall | None:
    """The kept call this one repeats (then compared by the caller), or None: a new call."""
    if service is None:
        return None
    if call == "create":
        return service.calls.filter(call="create").first()
    if request_id:
        return service.calls.filter(call=call, request_id=request_id).first()
    last = service.last_call
    if last is not None and last.call == call and not last.request_id and not differences(last.body, body):
        return last
    return None


# --- the calls --------------------------------------------------------------------------------------------------


def run_call(user, external_id: str, call: str, body: dict, *, request=None) -> Outcome:
    """Run a billing call (body checked for shape by the API) once; a repeat answers as the first did."""
    if call not in CALLS:
        raise NotFound(f"Unknown billing call {call!r} (calls: {', '.join(CALLS)}).")
    external_id = clean_external_id(external_id)
    request_id = str(body.get("request_id") or "")
    kept = stored_body(body)
    for attempt in range(2):
        try:
            with transaction.atomic():
                service = BillingService.objects.select_for_update().filter(external_id=external_id).first()
                previous = previous_call(service, call, request_id, kept)
                if previous is not None:
                    differ = differences(previous.body, kept)
                    if differ:
                        what = "create" if call == "create" else f"{call} with request_id {request_id!r}"
                        raise Conflict(f"Billing service {external_id} was already sent this {what} with another "
                                       f"body ({', '.join(differ)} differ); nothing was changed.", differ)
                    return Outcome(previous.answer, previous.status_code, replayed=True)
                if service is None and call != "create":
                    raise NotFound(f"There is no billing service {external_id!r}; create it first.")
                if service is not None and service.status == BillingService.Status.TERMINATED and call != "terminate":
                    raise ActionRefused(f"Billing service {external_id} was terminated; a new service needs a new "
                                        "external id.")
                handler = HANDLERS[call]
                service, status_code, answer, once = handler(user, service, external_id, body, request)
                record = BillingCall.objects.create(service=service, call=call, request_id=request_id, body=kept,
                                                    status_code=status_code, answer=answer, user=user)
                service.last_call = record
                service.save(update_fields=["last_call", "updated_at"])
                audit.record(f"billing.{call}", user=user, request=request, ve=service.ve,
                             detail=f"service {external_id}: {answer.get('note') or answer['status']}")
                return Outcome({**answer, **once}, status_code)
        except IntegrityError:
            if attempt:  # a concurrent first create of the same id won: answer as its repeat
                raise
    raise AssertionError("unreachable")


def live_ve(service: BillingService) -> VE | None:
    ve = VE.objects.filter(pk=service.ve_id).select_related("node", "owner").first() if service.ve_id else None
    return ve if ve is not None and ve.is_live else None


def answer_for(service: BillingService, task: Task | None = None, note: str = "") -> dict:
    """What a call answers: the service, its customer, its VE and addresses, and the task it queued."""
    ve = VE.objects.filter(pk=service.ve_id).select_related("node", "owner").first() if service.ve_id else None
    network = network_of(ve) if ve is not None and ve.is_live else {"addresses": [], "ssh_port": None}
    return {
        "external_id": service.external_id,
        "status": service.status,
        "plan": service.plan.name,
        "customer": {"username": service.customer.get_username(), "email": service.customer.email},
        "ve": None if ve is None else {"ctid": ve.ctid, "hostname": ve.hostname, "status": ve.status,
                                       "ostemplate": ve.ostemplate, "locked": ve.locked,
                                       "ip_addresses": list(ve.ip_addresses or []), "limits": ve.limits},
        "addresses": [{k: a[k] for k in ("address", "version", "gateway", "ssh_port")} for a in network["addresses"]],
        "ssh_port": network["ssh_port"],
        "task": None if task is None else {"id": task.pk, "action": task.action, "status": task.status,
                                           "url": f"/api/tasks/{task.pk}/"},
        "note": note,
    }


def find_plan(name) -> Plan:
    plan = Plan.objects.filter(name=str(name or "")).first()
    if plan is None:
        names = ", ".join(Plan.objects.filter(owner__isnull=True).values_list("name", flat=True)) or "none yet"
        raise InvalidRequest(f"There is no plan {name!r} (plans: {names}).")
    return plan


def new_username(email: str) -> str:
    base = USERNAME_RE.sub("-", email.split("@")[0].lower()).strip("-._")[:30] or "customer"
    User = get_user_model()
    name, n = base, 1
    while User.objects.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def find_or_make_customer(data: dict, plan: Plan) -> tuple:
    """Return (customer, password if made now else None): an existing customer by user name or e-mail, or a
    new one on plan. Refuses admins and other roles (a billing system provisions customers only)."""
    User = get_user_model()
    username, email = data.get("username") or "", data.get("email") or ""
    user = User.objects.filter(username=username).first() if username else None
    if user is None and email and not username:
        found = list(User.objects.filter(email__iexact=email)[:2])
        if len(found) > 1:
            raise InvalidRequest(f"Several users have the e-mail address {email}; name the customer by username.")
        user = found[0] if found else None
    if user is not None:
        if user.is_panel_admin or user.role != User.Role.CUSTOMER:
            raise InvalidRequest(f"User {user.get_username()} is a {user.get_role_display().lower()}, not a "
                                 "customer: billing services are for customers.")
        if not user.is_active:
            raise InvalidRequest(f"User {user.get_username()} is disabled: no service can be made for them.")
        if email and user.email and user.email.lower() != email.lower():
            raise InvalidRequest(f"User {user.get_username()} exists with another e-mail address; send theirs, or "
                                 "another username for a new customer.")
        return user, None
    if not email:
        raise InvalidRequest("A new customer needs an e-mail address.")
    password = data.get("password") or secrets.token_urlsafe(12)
    user = User.objects.create_user(username or new_username(email), email, password, role=User.Role.CUSTOMER,
                                    plan=plan, first_name=data.get("first_name", ""),
                                    last_name=data.get("last_name", ""))
    return user, password


def create(user, service, external_id: str, body: dict, request):
    plan = find_plan(body["plan"])
    hostname = ve_services.clean_hostname(body["hostname"]) if body.get("hostname") else ""
    root_password = ve_services.clean_password(body["root_password"]) if body.get("root_password") else ""
    ve_services.clean_template(None, body["template"])  # on any node; before anything is made
    customer, password = find_or_make_customer(body["customer"], plan)
    if customer.plan_id != plan.pk:  # the VE is made with its owner's plan (limits, addresses)
        customer.plan = plan
        customer.save(update_fields=["plan"])
    task = ve_services.create_ve(user, ostemplate=body["template"], hostname=hostname, root_password=root_password,
                                 owner=customer, start=body.get("start", True), request=request)
    service = BillingService.objects.create(external_id=external_id, customer=customer, ve=task.ve, plan=plan)
    once = {}
    if password is not None:  # shown on this answer only: never stored, so a repeat cannot show it
        once["credentials"] = {"username": customer.get_username(), "password": password}
    note = f"VE {task.ve.ctid} for {'new' if password else 'existing'} customer {customer.get_username()}"
    return service, 201, answer_for(service, task, note), once


def check_idle(ve: VE) -> None:
    if ve.tasks.filter(status__in=Task.ACTIVE).exists():
        raise ActionRefused(ve_services.busy_message(ve))


def suspend(user, service, external_id, body, request):
    reason = body.get("reason") or DEFAULT_REASON
    lock = f"{BILLING_LOCK}: {reason}"
    ve, task, note = live_ve(service), None, "suspended"
    if ve is not None:
        check_idle(ve)
        if ve.locked and not ve.locked.startswith(BILLING_LOCK):
            note = f"suspended; its lock {ve.locked!r} is replaced by billing's"
        ve.locked = lock  # first: from now on the owner cannot start it again
        ve.save(update_fields=["locked", "updated_at"])
        if ve.status == VE.Status.RUNNING:
            task = ve_services.request_action(user, ve, Task.Action.STOP, request=request)
    service.status, service.lock = BillingService.Status.SUSPENDED, lock
    service.save(update_fields=["status", "lock", "updated_at"])
    return service, 200, answer_for(service, task, note), {}


def unsuspend(user, service, external_id, body, request):
    if service.status != BillingService.Status.SUSPENDED:
        raise ActionRefused(f"Billing service {external_id} is {service.status}, not suspended.")
    ve, task, note = live_ve(service), None, "unsuspended"
    if ve is not None:
        check_idle(ve)
        if ve.locked.startswith(BILLING_LOCK):  # only billing's own lock: another (traffic) stays
            ve.locked = ""
            ve.save(update_fields=["locked", "updated_at"])
        if ve.locked:
            note = f"unsuspended, but the VE stays locked: {ve.locked}"
        elif ve.status in ve_services.DOWN:
            task = ve_services.request_action(user, ve, Task.Action.START, request=request)
    service.status, service.lock = BillingService.Status.ACTIVE, ""
    service.save(update_fields=["status", "lock", "updated_at"])
    return service, 200, answer_for(service, task, note), {}


def change_plan(user, service, external_id, body, request):
    if service.status == BillingService.Status.SUSPENDED:
        raise ActionRefused(f"Billing service {external_id} is suspended; unsuspend it before changing its plan.")
    plan = find_plan(body["plan"])
    ve, task = live_ve(service), None
    if ve is None:
        raise ActionRefused(f"Billing service {external_id} has no VE (it is gone); its plan cannot change.")
    if ve_services.limits_of(ve) != plan.limits():
        task = ve_services.set_limits(user, ve, plan.limits(), why=f"plan {plan.name}", request=request)
    customer = service.customer
    if customer.plan_id != plan.pk:
        customer.plan = plan
        customer.save(update_fields=["plan"])
    old, service.plan = service.plan.name, plan
    service.save(update_fields=["plan", "updated_at"])
    return service, 200, answer_for(service, task, f"plan {old} -> {plan.name}"), {}


def terminate(user, service, external_id, body, request):
    ve, task = live_ve(service), None
    if ve is not None:
        task = ve_services.request_action(user, ve, Task.Action.DESTROY, request=request,
                                          delete_backups=body.get("delete_backups", True))
    service.status, service.lock = BillingService.Status.TERMINATED, ""
    service.save(update_fields=["status", "lock", "updated_at"])
    return service, 200, answer_for(service, task, "terminated"), {}


HANDLERS = {"create": create, "suspend": suspend, "unsuspend": unsuspend, "change-plan": change_plan,
            "terminate": terminate}


def show(external_id: str) -> dict:
    service = BillingService.objects.filter(external_id=clean_external_id(external_id)).first()
    if service is None:
        raise NotFound(f"There is no billing service {external_id!r}.")
    return answer_for(service, note="current state")
