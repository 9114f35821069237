"""The Snapshots and Backups tabs of a VE, and the admins' page of the backups destroyed VEs left behind."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from vzpanel.core.decorators import admin_required, is_htmx
from vzpanel.tasks.models import Task

from . import services
from .access import get_ve_or_404, visible_backups, visible_ves
from .forms import ConfirmForm, RestoreNewForm, SnapshotForm


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
