from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from vzpanel.core.decorators import admin_required, is_htmx
from vzpanel.tasks.models import Task

from . import services
from .access import get_ve_or_404, visible_backups, visible_ves
from .forms import (
    BulkForm,
    ConfirmForm,
    DestroyForm,
    HostnameForm,
    PasswordForm,
    ReinstallForm,
    RestoreNewForm,
    SnapshotForm,
    VECreateForm,
    VEFilterForm,
)


def node_pool_warnings() -> list[str]:
    """The nodes whose disk quotas do not hold, as their last reconcile found (admins see it on the list)."""
    from vzpanel.nodes.health import pool_warnings
    from vzpanel.nodes.models import Node
    from vzpanel.tasks.queue import get_redis

    try:
        return pool_warnings(Node.objects.values_list("name", flat=True), get_redis())
    except Exception:  # Redis down: the page still shows
        return []


def create_refusal(user) -> str:
    """Why user cannot create a VE now (their plan, a reseller's quota), in words, or "" when they can."""
    refusal = services.new_ve_refusal(user)
    if not refusal:
        try:
            services.check_quotas("new_ve", owner=user, plan=user.plan)
        except services.QuotaExceeded as exc:
            refusal = exc.message
    return refusal


@login_required
def ve_list(request):
    """The VEs the user may see: search, filter, sort, paginate."""
    form = VEFilterForm(request.GET or None)
    ves = visible_ves(request.user).select_related("owner", "node").annotate(
        busy=Exists(Task.objects.filter(ve=OuterRef("pk"), status__in=Task.ACTIVE))
    )
    per_page = 50
    if form.is_valid():
        ves = form.apply(ves)
        per_page = form.cleaned_data.get("per_page") or 50
    page = Paginator(ves, per_page).get_page(request.GET.get("page"))
    context = {"form": form, "page": page, "sort": request.GET.get("sort", "ctid")}
    if not request.user.is_panel_admin and not is_htmx(request):
        context["create_refused"] = create_refusal(request.user)
    if request.user.is_panel_admin and not is_htmx(request):
        context["pool_warnings"] = node_pool_warnings()
    template = "ves/_table.html" if is_htmx(request) else "ves/ve_list.html"
    return render(request, template, context, status=400 if form.errors else 200)


@login_required
def ve_create(request):
    form = VECreateForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            task = services.create_ve(
                request.user, ostemplate=data["ostemplate"], hostname=data["hostname"],
                root_password=data["root_password"], owner=data.get("owner"), start=data["start"], request=request,
            )
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"VE {task.ve.ctid} is being created.", extra_tags=f"task:{task.pk}")
            return redirect("tasks:detail", task.pk)
    status = 400 if form.errors else 200
    return render(request, "ves/ve_create.html", {"form": form}, status=status)


def form_ids(name: str) -> str:
    """The element ids of one of the VE page's forms: its own prefix, since several share field names
    (root_password, confirm) and a label must point at its own field."""
    return name.removesuffix("_form") + "-%s"


def detail_context(request, ve, **forms):
    context = {
        "ve": ve,
        "tasks": ve.tasks.select_related("user")[:10],
        "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first(),
        "hostname_form": HostnameForm(initial={"hostname": ve.hostname}, auto_id=form_ids("hostname_form")),
        "password_form": PasswordForm(auto_id=form_ids("password_form")),
        "reinstall_form": ReinstallForm(ve=ve, auto_id=form_ids("reinstall_form")),
        "destroy_form": DestroyForm(ve=ve, auto_id=form_ids("destroy_form")),
        "allowed": {a: ve.status in s for a, s in services.ALLOWED_FROM.items()},
        "usage": usage_summary(ve),
        **limits_context(ve),
    }
    context.update(forms)
    return context


def limits_context(ve) -> dict:
    """The VE's limits in effect, its owner's plan, and whether they differ (and why, if a change failed)."""
    plan = services.plan_of(ve)
    differ = services.limits_differ(ve, plan)
    last = ve.tasks.filter(action=services.SET_LIMITS).only("pk", "status", "error").first() if differ else None
    return {
        "limits": services.limits_of(ve) if ve.limits else None,
        "plan": plan,
        "limits_differ": differ,
        "limits_failed": last if last is not None and last.status in ("failed", "errored") else None,
        "can_set_limits": ve.status in services.SET_LIMITS_FROM,
    }


@login_required
def ve_detail(request, ctid):
    ve = get_ve_or_404(request.user, ctid)
    return render(request, "ves/ve_detail.html", detail_context(request, ve))


@login_required
def ve_console(request, ctid):
    """The VE's web console. Its owner types; others (teacher, admin) watch unless they take over."""
    ve = get_ve_or_404(request.user, ctid)
    plan = ve.owner.plan if ve.owner is not None else None
    watch = request.GET.get("watch") == "1" or (ve.owner_id != request.user.pk and request.GET.get("watch") != "0")
    context = {
        "ve": ve,
        "console_role": "watch" if watch else "write",
        "console_mode": plan.get_console_mode_display() if plan is not None else "root shell",
    }
    return render(request, "ves/ve_console.html", context)


@login_required
def ve_status(request, ctid):
    """The live part of the VE page (state, current task, recent tasks), for htmx to swap in."""
    ve = get_ve_or_404(request.user, ctid)
    return render(request, "ves/_live.html", detail_context(request, ve))


FORMS = {
    Task.Action.SET_HOSTNAME: ("hostname_form", HostnameForm),
    Task.Action.SET_PASSWORD: ("password_form", PasswordForm),
    Task.Action.REINSTALL: ("reinstall_form", ReinstallForm),
    Task.Action.DESTROY: ("destroy_form", DestroyForm),
}


@login_required
@require_POST
def ve_action(request, ctid, action):
    """Queue one action on a VE; on bad input show the VE page again with the form's errors."""
    ve = get_ve_or_404(request.user, ctid)
    if action in services.SNAPSHOT_ACTIONS or action in services.BACKUP_ACTIONS:
        messages.error(request, "Snapshots and backups are managed on their own tabs of the VE page.")
        return redirect("ves:detail", ve.ctid)
    params = {}
    if action in FORMS:
        name, form_class = FORMS[action]
        kwargs = {"ve": ve} if form_class in (ReinstallForm, DestroyForm) else {}
        kwargs["auto_id"] = form_ids(name)
        if form_class is ReinstallForm:
            kwargs["user"] = request.user
        form = form_class(request.POST, **kwargs)
        if not form.is_valid():
            messages.error(request, "Please correct the errors below.")
            return render(request, "ves/ve_detail.html", detail_context(request, ve, **{name: form}), status=400)
        params = {k: v for k, v in form.cleaned_data.items() if k not in ("confirm",)}
    try:
        task = services.request_action(request.user, ve, action, request=request, **params)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("ves:detail", ve.ctid)
    if action == Task.Action.DESTROY:
        messages.success(request, f"VE {ve.ctid} is being destroyed.", extra_tags=f"task:{task.pk}")
        return redirect("tasks:detail", task.pk)
    messages.success(request, f"{task.get_action_display().capitalize()} of VE {ve.ctid} queued (task {task.pk}).",
                     extra_tags=f"task:{task.pk}")
    return redirect("ves:detail", ve.ctid)


@login_required
@require_POST
def ve_apply_plan(request, ctid):
    """Admins: queue setting the VE's limits to its owner's plan, live."""
    ve = get_ve_or_404(request.user, ctid)
    if not request.user.is_panel_admin:
        raise Http404("Not found.")  # like every admin page
    try:
        task = services.apply_plan(request.user, ve, request=request)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The limits of plan {ve.owner.plan.name} are being applied to VE {ve.ctid} "
                                  f"(task {task.pk}).")
    return redirect("ves:detail", ve.ctid)


TASK_LINKS = 20


def report_plan_change(request, change: services.PlanChange) -> None:
    """Tell the admin what a plan change did to VEs: tasks queued (with links), VEs skipped, users over quota."""
    if change.tasks:
        shown = change.tasks[:TASK_LINKS]
        links = format_html_join(", ", '<a href="{}">task {}</a> (VE {})',
                                 ((reverse("tasks:detail", args=[t.pk]), t.pk, t.ve.ctid) for t in shown))
        more = f" and {len(change.tasks) - TASK_LINKS} more" if len(change.tasks) > TASK_LINKS else ""
        messages.info(request, format_html("Plan limits are being applied to {} VE(s), live: {}{}.",
                                           len(change.tasks), links, more))
    if change.unchanged:
        messages.info(request, f"{change.unchanged} VE(s) already had these limits.")
    if change.skipped:
        messages.warning(request, "Not updated: " + " ".join(change.skipped[:10])
                         + (" …" if len(change.skipped) > 10 else ""))
    for line in change.over_quota:
        messages.warning(request, line)


@admin_required
@require_POST
def ve_bulk(request):
    form = BulkForm(request.POST)
    if not form.is_valid():
        for error in form.non_field_errors() or ["Choose start or stop."]:
            messages.error(request, error)
        return redirect(safe_next(request))
    ves = visible_ves(request.user).filter(ctid__in=form.ctid_list).select_related("node")
    tasks, skipped = services.bulk_action(request.user, ves, form.cleaned_data["action"], request=request)
    messages.success(request, f"{len(tasks)} task(s) queued.")
    if skipped:
        messages.warning(request, f"{len(skipped)} VE(s) skipped: " + "; ".join(skipped[:5])
                         + (" …" if len(skipped) > 5 else ""))
    return redirect(safe_next(request))


def safe_next(request) -> str:
    """Return the page to go back to: the posted `next` if it is on this site, else the VE list."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse("ves:list")


# --- usage, readable ---------------------------------------------------------------------------------

UNLIMITED = 1 << 60  # cgroup "max" comes through as a huge number


def human_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def human_seconds(s) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def _item(label, used, limit, fmt):
    if used is None:
        return None
    limited = isinstance(limit, (int, float)) and 0 < limit < UNLIMITED
    item = {"label": label, "used": fmt(used), "limit": fmt(limit) if limited else None, "percent": None}
    if limited:
        item["percent"] = min(100, round(100 * used / limit))
    return item


def usage_summary(ve) -> list[dict]:
    """The VE's last usage reading as a customer reads it: memory and disk against their limits, CPU time,
    processes. Empty when there is no reading (the VE is not running, or not read yet)."""
    u = ve.usage or {}
    if not u:
        return []
    limits = ve.limits or {}
    mib, gib = 1 << 20, 1 << 30
    items = [
        _item("Memory", u.get("memory_bytes"),
              u.get("memory_limit_bytes") or (limits.get("ram_mb") or 0) * mib, human_bytes),
        _item("Disk", u.get("disk_bytes"), u.get("disk_limit_bytes") or (limits.get("disk_gb") or 0) * gib,
              human_bytes),
        _item("CPU time", u.get("cpu_seconds"), None, human_seconds),
        _item("Processes", u.get("nproc"), u.get("nproc_limit") or limits.get("nproc"), lambda n: f"{int(n)}"),
    ]
    return [i for i in items if i is not None]


# --- snapshots and backups ---------------------------------------------------------------------------


def storage_context(ve, kind: str, user=None) -> dict:
    plan = services.plan_of(ve)
    active = ve.tasks.filter(status__in=Task.ACTIVE).first()
    context = {"ve": ve, "plan": plan, "active_task": active, "kind": kind,
               "allowed": {a: ve.status in s for a, s in services.ALLOWED_FROM.items()}}
    if kind == "backups" and user is not None:
        # restoring a backup as a new VE: admins, and the VE's owner (a VE of their own, within their plan)
        context["can_restore_new"] = user.is_panel_admin or ve.owner_id == user.pk
        context["is_admin"] = user.is_panel_admin
        context["next_ctid"] = services.next_ctid()
    if kind == "snapshots":
        context["snapshots"] = list(ve.snapshots.all())
        context["limit"] = plan.max_snapshots if plan else None
        context["tasks"] = ve.tasks.filter(action__in=services.SNAPSHOT_ACTIONS).select_related("user")[:5]
    else:
        context["backups"] = list(ve.backups.kept())
        context["limit"] = plan.max_backups if plan else None
        context["tasks"] = (Task.objects.filter(Q(ve=ve, action__in=services.BACKUP_ACTIONS)
                                                | Q(action=services.RESTORE_NEW, params__source=ve.ctid,
                                                    ve__in=visible_ves(user) if user is not None else []))
                            .select_related("user", "ve")[:5])
    return context


def storage_page(request, ve, kind: str, status=200, **forms):
    context = storage_context(ve, kind, request.user)
    context["snapshot_form"] = forms.get("snapshot_form") or SnapshotForm()
    template = f"ves/_{kind}.html" if is_htmx(request) else f"ves/ve_{kind}.html"
    return render(request, template, context, status=status)


@login_required
def ve_snapshots(request, ctid):
    """The Snapshots tab: take, list (name, time, size), roll back, delete."""
    return storage_page(request, get_ve_or_404(request.user, ctid), "snapshots")


@login_required
def ve_backups(request, ctid):
    """The Backups tab: back up now, list (time, size, verified), restore over the VE, delete."""
    return storage_page(request, get_ve_or_404(request.user, ctid), "backups")


def queue_storage_action(request, ve, action, back: str, **params):
    try:
        task = services.request_action(request.user, ve, action, request=request, **params)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{task.get_action_display().capitalize()} of VE {ve.ctid} queued "
                                  f"(task {task.pk}).", extra_tags=f"task:{task.pk}")
    return redirect(back, ve.ctid)


@login_required
@require_POST
def ve_snapshot_take(request, ctid):
    ve = get_ve_or_404(request.user, ctid)
    form = SnapshotForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Please correct the errors below.")
        return storage_page(request, ve, "snapshots", status=400, snapshot_form=form)
    return queue_storage_action(request, ve, Task.Action.SNAPSHOT, "ves:snapshots", **form.cleaned_data)


def confirmed(request) -> bool:
    form = ConfirmForm(request.POST)
    if form.is_valid():
        return True
    messages.error(request, form.errors["confirm"][0])
    return False


@login_required
@require_POST
def ve_snapshot_rollback(request, ctid, name):
    ve = get_ve_or_404(request.user, ctid)
    if not confirmed(request):
        return redirect("ves:snapshots", ve.ctid)
    return queue_storage_action(request, ve, Task.Action.SNAPSHOT_ROLLBACK, "ves:snapshots", name=name)


@login_required
@require_POST
def ve_snapshot_delete(request, ctid, name):
    ve = get_ve_or_404(request.user, ctid)
    return queue_storage_action(request, ve, Task.Action.SNAPSHOT_DELETE, "ves:snapshots", name=name)


@login_required
@require_POST
def ve_backup_now(request, ctid):
    ve = get_ve_or_404(request.user, ctid)
    return queue_storage_action(request, ve, Task.Action.BACKUP, "ves:backups")


@login_required
@require_POST
def ve_backup_restore(request, ctid, backup_id):
    ve = get_ve_or_404(request.user, ctid)
    if not confirmed(request):
        return redirect("ves:backups", ve.ctid)
    return queue_storage_action(request, ve, Task.Action.RESTORE, "ves:backups", backup=backup_id)


@login_required
@require_POST
def ve_backup_delete(request, ctid, backup_id):
    ve = get_ve_or_404(request.user, ctid)
    return queue_storage_action(request, ve, Task.Action.BACKUP_DELETE, "ves:backups", backup=backup_id)


@login_required
@require_POST
def ve_backup_restore_new(request, ctid, backup_id):
    """Restore one of the VE's backups as a new VE: admins for anyone, the VE's owner for themselves."""
    ve = get_ve_or_404(request.user, ctid)
    try:
        backup = services.find_backup(request.user, ve, backup_id)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("ves:backups", ve.ctid)
    return restore_new(request, backup, reverse("ves:backups", args=[ve.ctid]))


@admin_required
@require_POST
def kept_backup_restore_new(request, backup_id):
    """Admins: restore a backup (a destroyed VE's kept one, say) as a new VE."""
    backup = visible_backups(request.user).select_related("ve", "ve__owner").filter(pk=backup_id).first()
    if backup is None:
        raise Http404("No such backup.")
    return restore_new(request, backup, reverse("ves:kept-backups"))


def restore_new(request, backup, back: str):
    form = RestoreNewForm(request.POST, user=request.user)
    if not form.is_valid():
        for name, errors in form.errors.items():
            label = form.fields[name].label if name in form.fields else ""
            messages.error(request, (f"{label}: " if label else "") + " ".join(errors) + " Nothing was restored.")
        return redirect(back)
    try:
        task = services.restore_as_new(request.user, backup, request=request, **form.cleaned_data)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    messages.success(request, f"Backup {backup.pk} of VE {backup.ctid} is being restored as new VE {task.ve.ctid} "
                              f"(task {task.pk}).")
    return redirect("tasks:detail", task.pk)


@admin_required
def kept_backups(request):
    """Admins: the backups destroyed VEs left behind (nobody else can reach them), to restore as a new VE or delete."""
    backups = (visible_backups(request.user).kept().filter(ve__status="destroyed")
               .select_related("ve", "ve__owner", "node"))
    return render(request, "ves/kept_backups.html", {"backups": backups, "next_ctid": services.next_ctid()})


@admin_required
@require_POST
def kept_backup_delete(request, backup_id):
    backup = visible_backups(request.user).select_related("ve").filter(pk=backup_id).first()
    if backup is None:
        raise Http404("No such backup.")
    try:
        task = services.request_action(request.user, backup.ve, Task.Action.BACKUP_DELETE, request=request,
                                       backup=backup.pk)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Backup {backup.pk} of destroyed VE {backup.ctid} is being deleted (task {task.pk}).")
    return redirect("ves:kept-backups")


# --- hosting: the Network tab, SSH keys, IP pools ---------------------------------------------------


def network_context(request, ve, **forms):
    from vzpanel.nodes.sshforward import ssh_host

    from . import hosting
    from .forms import AddressAddForm, SSHPushForm

    net = hosting.network_of(ve)
    host = ssh_host(request)
    return {"ve": ve, "net": net, "ssh_host": host,
            "ssh_line": f"ssh -p {net['ssh_port']} root@{host}" if net["ssh_port"] else "",
            "plan_full": not request.user.is_panel_admin and plan_is_full(net),
            "add_form": forms.get("add_form") or AddressAddForm(),
            "push_form": SSHPushForm(initial={"password_off": not net["password_login"]}),
            "keys": request.user.ssh_keys.all() if ve.owner_id == request.user.pk else (ve.owner.ssh_keys.all()
                                                                                        if ve.owner else []),
            "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first()}


def plan_is_full(net: dict) -> bool:
    """Whether the VE holds every address its plan allows, of both families (then Add cannot succeed)."""
    held = {4: 0, 6: 0}
    for a in net["addresses"]:
        held[a["version"]] += 1
    allowed = {4: net["allowed"]["ipv4"] or 0, 6: net["allowed"]["ipv6"] or 0}
    return all(held[v] >= allowed[v] for v in (4, 6))


@login_required
def ve_network(request, ctid):
    """The VE's addresses, its SSH line and its SSH keys."""
    ve = get_ve_or_404(request.user, ctid)
    return render(request, "ves/ve_network.html", network_context(request, ve))


def _hosting_call(request, ve, call, done: str):
    try:
        task = call()
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_network.html", network_context(request, ve), status=exc.status_code)
    messages.success(request, f"{done} (task {task.pk}).")
    return redirect("ves:network", ve.ctid)


@login_required
@require_POST
def ve_address_add(request, ctid):
    from . import hosting
    from .forms import AddressAddForm

    ve = get_ve_or_404(request.user, ctid)
    form = AddressAddForm(request.POST)
    if not form.is_valid():
        return render(request, "ves/ve_network.html", network_context(request, ve, add_form=form), status=400)
    d = form.cleaned_data
    return _hosting_call(request, ve, lambda: hosting.add_address(request.user, ve, version=d["version"],
                                                                  address=d["address"], request=request),
                         "The address is being added")


@login_required
@require_POST
def ve_address_remove(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    address = request.POST.get("address", "")
    return _hosting_call(request, ve, lambda: hosting.remove_address(request.user, ve, address, request=request),
                         f"Address {address} is being removed")


@login_required
@require_POST
def ve_reverse_dns(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    try:
        hosting.set_reverse_dns(request.user, ve, request.POST.get("address", ""), request.POST.get("reverse_dns", ""))
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_network.html", network_context(request, ve), status=exc.status_code)
    messages.success(request, "Reverse DNS name saved.")
    return redirect("ves:network", ve.ctid)


@login_required
@require_POST
def ve_ssh_push(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    off = request.POST.get("password_off") in ("on", "true", "1")
    return _hosting_call(request, ve, lambda: hosting.push_keys(request.user, ve, password_login=not off,
                                                                request=request),
                         "The SSH keys are being put into the VE")


@login_required
def ssh_keys(request):
    """The user's own public SSH keys: add, delete."""
    from . import hosting
    from .forms import SSHKeyForm

    form = SSHKeyForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                key = hosting.add_key(request.user, form.cleaned_data["name"], form.cleaned_data["key"])
            except services.ServiceError as exc:
                form.add_error("key", exc.message)
            else:
                messages.success(request, f"Key {key.name} added.")  # (its fingerprint is in the list)
                return redirect("ves:ssh-keys")
        status = 400
        if "PRIVATE KEY" in request.POST.get("key", ""):
            form.data = form.data.copy()
            form.data["key"] = ""  # a private key pasted by mistake is never sent back into the page
    return render(request, "ves/ssh_keys.html", {"form": form, "keys": request.user.ssh_keys.all()}, status=status)


@login_required
@require_POST
def ssh_key_delete(request, key_id):
    deleted, _ = request.user.ssh_keys.filter(pk=key_id).delete()
    if not deleted:
        raise Http404("No such key.")
    messages.success(request, "Key deleted (VEs keep it until you put your keys into them again).")
    return redirect("ves:ssh-keys")


@admin_required
def ip_pools(request):
    """Admins: the IP pools of every node."""
    from vzpanel.nodes.models import IPPool

    from .forms import PoolForm

    form = PoolForm(request.POST or None, initial={"node": services.Node.local()})
    if request.method == "POST" and form.is_valid():
        pool = form.save()
        messages.success(request, f"Pool {pool.name} ({pool.network}) added to node {pool.node.name}.")
        return redirect("ves:pools")
    pools = IPPool.objects.select_related("node").annotate(used=Count("addresses"))
    return render(request, "ves/ip_pools.html", {"form": form, "pools": pools},
                  status=400 if form.errors else 200)


@admin_required
@require_POST
def ip_pool_delete(request, pool_id):
    from vzpanel.nodes.models import IPPool

    pool = IPPool.objects.filter(pk=pool_id).first()
    if pool is None:
        raise Http404("No such pool.")
    if pool.addresses.exists():
        messages.error(request, f"Pool {pool.name} has {pool.addresses.count()} address(es) in use: remove them "
                                "from their VEs first.")
    else:
        pool.delete()
        messages.success(request, f"Pool {pool.name} deleted.")
    return redirect("ves:pools")


# --- the Firewall tab (vzpanel/ves/firewall.py) -------------------------------------------------------


def firewall_context(ve, rule=None) -> dict:
    """The Firewall tab's context; ``rule`` is a refused new rule's fields, shown again to be corrected."""
    from . import firewall

    rule = {k: str((rule or {}).get(k, ""))[:100] for k in ("action", "proto", "port", "source")}
    return {"ve": ve, "fw": firewall.current(ve), "presets": firewall.PRESETS, "actions": firewall.ACTIONS,
            "rule": rule,
            "protos": firewall.PROTOS, "max_rules": firewall.MAX_RULES,
            "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first(),
            "tasks": ve.tasks.filter(action=Task.Action.SET_FIREWALL).select_related("user")[:5]}


@login_required
def ve_firewall(request, ctid):
    """The VE's firewall: default policy, rules, presets (its owner and admins only)."""
    from . import firewall

    ve = get_ve_or_404(request.user, ctid)
    firewall.check_access(request.user, ve)
    return render(request, "ves/ve_firewall.html", firewall_context(ve))


@login_required
@require_POST
def ve_firewall_change(request, ctid):
    """Apply a preset, add or delete a rule, or set the default policy: one task replacing the whole set."""
    from . import firewall

    ve = get_ve_or_404(request.user, ctid)
    firewall.check_access(request.user, ve)
    fw, post = firewall.current(ve), request.POST
    policy, rules = fw["policy"], list(fw["rules"])
    try:
        what = post.get("op", "")
        if what == "preset":
            if post.get("preset") not in firewall.PRESETS:
                raise services.InvalidRequest("Pick one of the presets.")
            _label, policy, rules = firewall.PRESETS[post["preset"]]
        elif what == "add":
            rules.append(firewall.make_rule(post.get("action", ""), post.get("proto", ""), post.get("port", ""),
                                            post.get("source", "")))
        elif what == "delete":
            n = post.get("n", "")
            if not n.isdigit() or not 1 <= int(n) <= len(rules):
                raise services.InvalidRequest("There is no such rule.")
            del rules[int(n) - 1]
        elif what == "policy":
            policy = post.get("policy", "")
        else:
            raise services.InvalidRequest("Unknown change.")
        task = firewall.set_firewall(request.user, ve, policy, rules, request=request)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_firewall.html", firewall_context(ve, post if what == "add" else None),
                      status=exc.status_code)
    messages.success(request, f"The firewall is being changed (task {task.pk}).")
    return redirect("ves:firewall", ve.ctid)
