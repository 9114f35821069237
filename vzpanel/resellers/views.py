"""The reseller's pages (customers, plans, quota, audit) and the admins' (resellers and their quotas).

Everything of another reseller or of the admins is a 404 here, as any object a user may not see.
"""

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from vzpanel.accounts.models import User
from vzpanel.accounts.views import save_user
from vzpanel.audit import log as audit
from vzpanel.audit.views import AuditSearchForm, search
from vzpanel.core.decorators import admin_required, is_htmx
from vzpanel.plans.views import LIMIT_FIELDS
from vzpanel.ves import services as ve_services
from vzpanel.ves.views import report_plan_change

from . import services
from .forms import CustomerCreateForm, CustomerEditForm, QuotaForm, ResellerCreateForm, ResellerPlanForm
from .models import ResellerQuota


def reseller_required(view):
    """Let active resellers in; everyone else (admins included: they have their own pages) gets a 404."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not services.is_reseller(request.user):
            raise Http404("Not found.")
        return view(request, *args, **kwargs)

    return wrapper


def _status(form) -> int:
    return 400 if form.errors else 200


# --- the reseller's pages -----------------------------------------------------------------------------------

@reseller_required
def overview(request):
    """The reseller's quota: each resource, in use and left."""
    reseller = request.user
    return render(request, "resellers/overview.html", {
        "rows": services.usage_rows(reseller), "customer_count": services.customers_of(reseller).count(),
        "plan_count": services.plans_of(reseller).count()})


@reseller_required
def customer_list(request):
    customers = (services.customers_of(request.user).select_related("plan")
                 .annotate(ve_count=Count("ves", filter=~Q(ves__status="destroyed"))).order_by("username"))
    return render(request, "resellers/customer_list.html", {"customers": customers})


@reseller_required
def customer_create(request):
    form = CustomerCreateForm(request.POST or None, reseller=request.user)
    if request.method == "POST" and form.is_valid():
        customer = form.save()
        audit.record("user.create", request=request,
                     detail=f"user {customer.username} (customer of {request.user.username}, plan "
                            f"{customer.plan or 'none'})")
        messages.success(request, f"Customer {customer.username} created.")
        return redirect("resellers:customers")
    return render(request, "resellers/customer_form.html", {"form": form}, status=_status(form))


@reseller_required
def customer_edit(request, pk):
    customer = services.get_customer_or_404(request.user, pk)
    form = CustomerEditForm(request.POST or None, instance=customer, reseller=request.user)
    if request.method == "POST" and form.is_valid():
        save_user(request, form, customer)
        messages.success(request, f"Customer {customer.username} saved.")
        return redirect("resellers:customers")
    ves = customer.ves.live().order_by("ctid")
    return render(request, "resellers/customer_form.html", {"form": form, "customer": customer, "ves": ves},
                  status=_status(form))


@reseller_required
@require_POST
def customer_disable(request, pk):
    """Disable a customer: they cannot sign in any more; their VEs are kept (and still count)."""
    customer = services.get_customer_or_404(request.user, pk)
    if customer.is_active:
        customer.is_active = False
        customer.save(update_fields=["is_active"])
        audit.record("user.update", request=request, detail=f"user {customer.username}: disabled")
    messages.success(request, f"Customer {customer.username} is disabled; their VEs are kept.")
    return redirect("resellers:customers")


@reseller_required
def plan_list(request):
    plans = services.plans_of(request.user).annotate(user_count=Count("users"))
    return render(request, "resellers/plan_list.html", {"plans": plans})


@reseller_required
def plan_edit(request, pk=None):
    """Create or edit one of the reseller's plans; new limits reach its customers' VEs live (as an admin's edit)."""
    plan = services.get_plan_or_404(request.user, pk) if pk else None
    form = ResellerPlanForm(request.POST or None, instance=plan, reseller=request.user)
    if request.method == "POST" and form.is_valid():
        change = None
        with transaction.atomic():
            plan = form.save()
            audit.record("plan.create" if pk is None else "plan.update", request=request,
                         detail=f"plan {plan.name} (of {request.user.username}): "
                                f"{', '.join(form.changed_data) or 'nothing'}")
            changed = set(form.changed_data)
            if pk is not None and changed & (LIMIT_FIELDS | {"max_ves"}):
                # its customers' VEs only: a user an admin put on this plan is the admins' to update
                users = plan.users.filter(reseller=request.user).select_related("plan").order_by("username")
                change = ve_services.apply_plans(request.user, users, limits=bool(changed & LIMIT_FIELDS),
                                                 plan=plan, request=request)
        messages.success(request, f"Plan {plan.name} saved.")
        if change is not None:
            report_plan_change(request, change)
        return redirect("resellers:plans")
    return render(request, "resellers/plan_form.html", {"form": form, "plan": plan}, status=_status(form))


@reseller_required
def audit_list(request):
    """The audit entries of the reseller, its customers and their VEs (the admins' search form)."""
    form = AuditSearchForm(request.GET or None)
    entries = services.audit_entries(request.user).select_related("task")
    if form.is_valid():
        entries = search(entries, form.cleaned_data)
    page = Paginator(entries, 50).get_page(request.GET.get("page"))
    template = "audit/_table.html" if is_htmx(request) else "resellers/audit_list.html"
    return render(request, template, {"form": form, "page": page}, status=_status(form))


# --- the admins' pages ----------------------------------------------------------------------------------------

@admin_required
def reseller_list(request):
    resellers = (User.objects.filter(role=User.Role.RESELLER).select_related("reseller_quota")
                 .annotate(customer_count=Count("customers", distinct=True)).order_by("username"))
    rows = [{"reseller": r, "usage": services.usage_rows(r)} for r in resellers]
    return render(request, "resellers/reseller_list.html", {"rows": rows})


@admin_required
def reseller_create(request):
    form = ResellerCreateForm(request.POST or None, prefix="user")
    quota = QuotaForm(request.POST or None, prefix="quota")
    if request.method == "POST" and form.is_valid() and quota.is_valid():
        with transaction.atomic():
            reseller = form.save()
            quota.instance.reseller = reseller
            quota.save()
            audit.record("reseller.create", request=request,
                         detail=f"reseller {reseller.username}: {describe(quota.instance)}")
        messages.success(request, f"Reseller {reseller.username} created.")
        return redirect("resellers:admin-list")
    status = 400 if form.errors or quota.errors else 200
    return render(request, "resellers/reseller_form.html", {"form": form, "quota": quota}, status=status)


@admin_required
def reseller_quota(request, pk):
    """Set a reseller's quota. Below what its customers' VEs take already, nothing is destroyed: they can only
    shrink until they fit again (each change that asks for more is refused)."""
    reseller = get_object_or_404(User, pk=pk, role=User.Role.RESELLER)
    row = ResellerQuota.objects.filter(reseller=reseller).first() or ResellerQuota(reseller=reseller)
    quota = QuotaForm(request.POST or None, instance=row, prefix="quota")
    if request.method == "POST" and quota.is_valid():
        quota.save()
        audit.record("reseller.quota", request=request, detail=f"reseller {reseller.username}: {describe(row)}")
        messages.success(request, f"The quota of {reseller.username} is saved.")
        for item in services.usage_rows(reseller):
            if item["over"]:
                messages.warning(request, f"{reseller.username}'s customers already take {item['used']} "
                                          f"{item['unit']} {item['label']} (quota {item['limit']}); nothing is "
                                          "removed, but nothing more is given until they fit.")
        return redirect("resellers:admin-list")
    return render(request, "resellers/reseller_form.html", {"quota": quota, "reseller": reseller,
                                                           "usage": services.usage_rows(reseller)},
                  status=_status(quota))


def describe(row: ResellerQuota) -> str:
    return (f"{row.max_ves} VEs, {row.ram_mb} MB RAM, {row.disk_gb} GB disk, {row.ipv4_addresses} IPv4 and "
            f"{row.ipv6_addresses} IPv6 addresses")
