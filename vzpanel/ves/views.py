from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from vzpanel.core.decorators import admin_required, is_htmx
from vzpanel.tasks.models import Task

from . import nodestate, services
from .access import get_ve_or_404, visible_ves
from .forms import (
    BulkForm,
    DestroyForm,
    HostnameForm,
    PasswordForm,
    ReinstallForm,
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
    page.object_list = nodestate.mark(page.object_list)  # "unknown" where the node does not answer (one round trip)
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
                node=data.get("node"),
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
    nodestate.mark([ve])
    node_refusal = nodestate.refusal(ve)  # a node that stopped answering: every action is refused
    context = {
        "node_refusal": node_refusal,
        "ve": ve,
        "tasks": ve.tasks.select_related("user")[:10],
        "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first(),
        "hostname_form": HostnameForm(initial={"hostname": ve.hostname}, auto_id=form_ids("hostname_form")),
        "password_form": PasswordForm(auto_id=form_ids("password_form")),
        "reinstall_form": ReinstallForm(ve=ve, auto_id=form_ids("reinstall_form")),
        "destroy_form": DestroyForm(ve=ve, auto_id=form_ids("destroy_form")),
        "allowed": {a: ve.status in s and not node_refusal for a, s in services.ALLOWED_FROM.items()},
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
