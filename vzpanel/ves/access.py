"""Object permissions: the one place that decides who may see and act on a VE or a task.

A user who may not see a VE gets a 404 for it from every page, API call, task and websocket.
"""

from django.http import Http404

from vzpanel.tasks.models import Task

from .models import VE, Backup


def visible_ves(user):
    return VE.objects.visible_to(user).live()


def get_ve_or_404(user, ctid) -> VE:
    """Return the live VE ctid if user may see it, else raise Http404."""
    try:
        return visible_ves(user).select_related("owner", "node", "owner__plan").get(ctid=int(ctid))
    except (VE.DoesNotExist, ValueError, TypeError):
        raise Http404("No such VE.") from None


def visible_tasks(user):
    return Task.objects.visible_to(user)


def get_task_or_404(user, task_id) -> Task:
    """Return the task if user may see it, else raise Http404."""
    try:
        return visible_tasks(user).select_related("ve", "node", "user").get(pk=int(task_id))
    except (Task.DoesNotExist, ValueError, TypeError):
        raise Http404("No such task.") from None


def find_ve(user, ctid) -> VE | None:
    """Like get_ve_or_404, for code that cannot raise Http404 (websockets)."""
    try:
        return get_ve_or_404(user, ctid)
    except Http404:
        return None


def find_task(user, task_id) -> Task | None:
    try:
        return get_task_or_404(user, task_id)
    except Http404:
        return None


def visible_backups(user):
    """Return the backups user may see: admins every one (also a destroyed VE's kept backups); anyone else
    the backups of live VEs they may see, so a destroyed VE's backups are out of their reach."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return Backup.objects.none()
    if user.is_panel_admin:
        return Backup.objects.all()
    return Backup.objects.filter(ve__in=visible_ves(user))
