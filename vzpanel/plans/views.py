from django import forms
from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render

from vzpanel.audit import log as audit
from vzpanel.core.decorators import admin_required
from vzpanel.nodes.models import Node
from vzpanel.traffic.forms import TRAFFIC_FIELDS, traffic_fields  # the monthly traffic quota's fields
from vzpanel.ves import services as ve_services
from vzpanel.ves.views import report_plan_change

from .models import Plan


class PlanForm(forms.ModelForm):
    class Meta:
        model = Plan
        fields = ["name", "description", "ram_mb", "swap_mb", "cpus", "disk_gb", "nproc", "max_ves", "console_mode",
                  "max_snapshots", "max_backups", "backup_daily", *TRAFFIC_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["console_mode"].required = False  # left out: a root shell, as before the field existed
        for name in ("max_snapshots", "max_backups"):  # left out: the plan's current number (or the default)
            self.fields[name].required = False
        traffic_fields(self.fields)

    def _kept(self, name):
        value = self.cleaned_data.get(name)
        if value is None:
            value = getattr(self.instance, name) if self.instance.pk else Plan._meta.get_field(name).default
        return value

    def clean_max_snapshots(self):
        return self._kept("max_snapshots")

    def clean_max_backups(self):
        return self._kept("max_backups")

    def clean_console_mode(self):
        return self.cleaned_data.get("console_mode") or Plan.ConsoleMode.ROOT

    def clean_traffic_gb(self):
        return self._kept("traffic_gb")

    def clean_traffic_over(self):
        return self.cleaned_data.get("traffic_over") or (self.instance.traffic_over if self.instance.pk else "throttle")

    def clean_traffic_throttle_mbit(self):
        return self._kept("traffic_throttle_mbit")

    def clean(self):
        """Refuse limits no node can give: a VE is made on one node, so the largest node bounds them."""
        data = super().clean()
        cpus, ram_mb = Node.largest()
        if data.get("cpus") is not None and data["cpus"] > cpus:
            self.add_error("cpus", f"No node has {data['cpus']} CPUs: the largest has {cpus}, so a VE can use at "
                                   f"most {cpus}.")
        if ram_mb and data.get("ram_mb") is not None and data["ram_mb"] > ram_mb:
            self.add_error("ram_mb", f"No node has {data['ram_mb']} MB of memory: the largest has {ram_mb} MB, so a VE "
                                     f"can have at most {ram_mb} MB.")
        if self.instance.pk and not self.errors:  # its VEs take the new values: quotas beyond plans must hold
            from copy import copy

            candidate = copy(self.instance)
            for name, value in data.items():
                setattr(candidate, name, value)
            try:
                ve_services.check_quotas("plan", plan=candidate)
            except ve_services.QuotaExceeded as exc:
                self.add_error(None, exc.message)
        return data

    def _post_clean(self):
        super()._post_clean()
        # The model's "at least" rules, in words that say 0 is not "unlimited".
        for name, least, unit in (("ram_mb", 16, "MB"), ("disk_gb", 1, "GB"), ("nproc", 16, "processes")):
            if name in self.errors and self.data.get(name) not in (None, "") and _number(self.data.get(name)) == 0:
                self.errors[name] = self.error_class([f"0 is not allowed here: it would not mean unlimited (every VE "
                                                      f"has limits). Give at least {least} {unit}."])


def _number(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


LIMIT_FIELDS = set(ve_services.LIMIT_KEYS)  # the form fields that are per-VE limits


@admin_required
def plan_list(request):
    plans = Plan.objects.annotate(user_count=Count("users"))
    return render(request, "plans/plan_list.html", {"plans": plans})


@admin_required
def plan_edit(request, pk=None):
    plan = get_object_or_404(Plan, pk=pk) if pk else None
    form = PlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        change = None
        with transaction.atomic():
            plan = form.save()
            audit.record("plan.create" if pk is None else "plan.update", request=request,
                         detail=f"plan {plan.name}: {', '.join(form.changed_data) or 'nothing'}")
            changed = set(form.changed_data)
            if pk is not None and changed & (LIMIT_FIELDS | {"max_ves"}):
                # Its VEs get the new limits live (its users' and its courses' students'); users with more
                # VEs than it now allows are named.
                users = plan.users.select_related("plan").order_by("username")
                change = ve_services.apply_plans(request.user, users, limits=bool(changed & LIMIT_FIELDS),
                                                 plan=plan, request=request)
        messages.success(request, f"Plan {plan.name} saved.")
        if change is not None:
            report_plan_change(request, change)
        return redirect("plans:list")
    return render(request, "plans/plan_form.html", {"form": form, "plan": plan}, status=400 if form.errors else 200)
