"""The reseller's forms (customers, plans) and the admins' (a new reseller, its quota)."""

from django import forms
from django.contrib.auth.forms import UserCreationForm

from vzpanel.accounts.forms import NewPasswordForm
from vzpanel.accounts.models import User
from vzpanel.plans.views import PlanForm
from vzpanel.ves.services import QuotaExceeded

from . import quota as q
from . import services
from .models import ResellerQuota

# Fields of a user a reseller never sets: a post that carries them (crafted by hand) is refused in words,
# not silently half-done.
NOT_FOR_RESELLERS = {"role": User.Role.CUSTOMER, "is_staff": "", "is_superuser": "", "reseller": "", "teacher": "",
                     "groups": "", "user_permissions": ""}


def refuse_privileged(form) -> None:
    """Add an error for each field of the post a reseller may not set (a role other than customer, say)."""
    for name, allowed in NOT_FOR_RESELLERS.items():
        for value in form.data.getlist(name) if hasattr(form.data, "getlist") else [form.data.get(name)]:
            if value not in (None, "", allowed):
                form.add_error(None, f"Resellers manage their own customers only: “{name}” cannot be set here "
                                     f"(got {str(value)[:40]!r}). Nothing was saved.")
                return


class _CustomerFields:
    """What customer forms share: the plan is one of the reseller's, and a new plan must fit its quota."""

    def setup(self, reseller):
        self.reseller = reseller
        self.fields["plan"].queryset = services.plans_of(reseller)
        self.fields["plan"].required = False
        self.fields["plan"].help_text = "One of your plans; it sets what each of the customer's VEs gets."

    def check_customer(self, data):
        refuse_privileged(self)
        if "plan" in self.changed_data and self.instance.pk and "plan" not in self.errors:
            try:
                services.check("owner_plan", owner=self.instance, plan=data.get("plan"))
            except QuotaExceeded as exc:
                self.add_error("plan", exc.message)


class CustomerCreateForm(_CustomerFields, UserCreationForm):
    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name", "plan"]

    def __init__(self, *args, reseller, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup(reseller)

    def clean(self):
        data = super().clean()
        self.check_customer(data)
        return data

    def save(self, commit=True):
        user = super().save(commit=False)
        user.role, user.reseller = User.Role.CUSTOMER, self.reseller
        if commit:
            user.save()
        return user


class CustomerEditForm(_CustomerFields, NewPasswordForm, forms.ModelForm):
    class Meta:
        model = User
        fields = ["email", "first_name", "last_name", "plan", "is_active"]
        labels = {"is_active": "active (a disabled customer cannot sign in; their VEs are kept)"}

    def __init__(self, *args, reseller, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup(reseller)

    def clean(self):
        data = super().clean()
        self.check_customer(data)
        return data


class ResellerPlanForm(PlanForm):
    """The admins' plan form (same fields, node limits and wording) for a reseller's own plan; one VE of it must
    fit the reseller's whole quota, and new values must fit beside its customers' other VEs (PlanForm.clean)."""

    def __init__(self, *args, reseller, **kwargs):
        super().__init__(*args, **kwargs)
        self.reseller = reseller

    def clean(self):
        data = super().clean()
        refuse_privileged(self)
        if "owner" in self.data:
            self.add_error(None, "A reseller's plan is its own: “owner” cannot be set here. Nothing was saved.")
        if not self.errors:
            one = q.PerVE(ram_mb=data.get("ram_mb") or 0, disk_gb=data.get("disk_gb") or 0,
                          ipv4=self.instance.ipv4_addresses, ipv6=self.instance.ipv6_addresses)
            for why in q.too_big_for(services.limit_of(self.reseller), one):
                self.add_error(None, why)
        return data

    def save(self, commit=True):
        plan = super().save(commit=False)
        plan.owner = self.reseller
        if commit:
            plan.save()
        return plan


class QuotaForm(forms.ModelForm):
    class Meta:
        model = ResellerQuota
        fields = ["max_ves", "ram_mb", "disk_gb", "ipv4_addresses", "ipv6_addresses"]


class ResellerCreateForm(UserCreationForm):
    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name"]

    def save(self, commit=True):
        user = super().save(commit=False)
        user.role = User.Role.RESELLER
        if commit:
            user.save()
        return user
