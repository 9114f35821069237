from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from vzpanel.core.decorators import is_htmx
from vzpanel.ves import services
from vzpanel.ves.access import get_task_or_404, visible_tasks

from .models import Task


class TaskFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", help_text="CTID, user, task number or error reference")
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *Task.Status.choices])
    action = forms.ChoiceField(required=False, choices=[("", "any action"), *Task.Action.choices])

    def apply(self, tasks):
        data = self.cleaned_data
        q = data.get("q", "").strip()
        if q:
            rule = Q(user__username__icontains=q) | Q(error_ref__iexact=q)
            if q.isdigit():
                rule |= Q(ve__ctid=int(q)) | Q(pk=int(q))
            tasks = tasks.filter(rule)
        if data.get("status"):
            tasks = tasks.filter(status=data["status"])
        if data.get("action"):
            tasks = tasks.filter(action=data["action"])
        return tasks


@login_required
def task_list(request):
    """Recent tasks: who did what to which VE, and how it ended."""
    form = TaskFilterForm(request.GET or None)
    tasks = visible_tasks(request.user).select_related("ve", "user", "node").defer("log", "traceback")
    if form.is_valid():
        tasks = form.apply(tasks)
    page = Paginator(tasks, 50).get_page(request.GET.get("page"))
    any_active = any(t.is_active for t in page)
    template = "tasks/_table.html" if is_htmx(request) else "tasks/task_list.html"
    return render(request, template, {"form": form, "page": page, "any_active": any_active})


@login_required
def task_detail(request, task_id):
    task = get_task_or_404(request.user, task_id)
    return render(request, "tasks/task_detail.html", {"task": task})


@login_required
def task_panel(request, task_id):
    """The live part of the task page, swapped in by htmx when the task changes."""
    task = get_task_or_404(request.user, task_id)
    return render(request, "tasks/_task_live.html", {"task": task})


@login_required
@require_POST
def task_cancel(request, task_id):
    task = get_task_or_404(request.user, task_id)
    try:
        services.cancel_task(request.user, task, request=request)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Task {task.pk} cancelled.")
    return redirect("tasks:detail", task.pk)
