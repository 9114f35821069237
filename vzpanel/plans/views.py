from django import forms
from django.contrib import messages
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render

from vzpanel.audit import log as audit
from vzpanel.core.decorators import admin_required

from .models import Plan


class PlanForm(forms.ModelForm):
    class Meta:
        model = Plan
        fields = ["name", "description", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["console_mode"].required = False  # left out: a root shell, as before the field existed

    def clean_console_mode(self):
        return self.cleaned_data.get("console_mode") or Plan.ConsoleMode.ROOT


@admin_required
def plan_list(request):
    plans = Plan.objects.annotate(user_count=Count("users"))
    return render(request, "plans/plan_list.html", {"plans": plans})


@admin_required
def plan_edit(request, pk=None):
    plan = get_object_or_404(Plan, pk=pk) if pk else None
    form = PlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        plan = form.save()
        audit.record("plan.create" if pk is None else "plan.update", request=request,
                     detail=f"plan {plan.name}: {', '.join(form.changed_data) or 'nothing'}")
        messages.success(request, f"Plan {plan.name} saved.")
        return redirect("plans:list")
    return render(request, "plans/plan_form.html", {"form": form, "plan": plan}, status=400 if form.errors else 200)
