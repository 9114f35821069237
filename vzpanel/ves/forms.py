from django import forms
from django.contrib.auth import get_user_model

from vzpanel.nodes.models import Node, Template

from . import services
from .models import VE


def template_choices(node, user=None):
    """The templates of node (None: of any node, each name once) that user may build from (Template.usable_by);
    without a user, the public ones."""
    templates = Template.objects.filter(node=node) if node is not None else Template.objects.order_by("name", "pk")
    templates = templates.usable_by(user) if user is not None else templates.public()
    choices: dict[str, tuple[str, str]] = {}
    for t in templates:
        choices.setdefault(t.name, (t.name, f"{t.name} — {t.description}" if t.description else t.name))
    return list(choices.values())


def template_field(**kwargs) -> forms.ChoiceField:
    """An OS template choice that names the template a refused choice asked for."""
    return forms.ChoiceField(label="OS template", error_messages={
        "invalid_choice": "There is no OS template %(value)s that you may use here; choose one from the list."},
        **kwargs)


class ServiceCheckedForm(forms.Form):
    """A form whose fields are checked by the same rules the services (and so the API) apply."""

    def check(self, name, cleaner):
        value = self.cleaned_data.get(name)
        if value:
            try:
                return cleaner(value)
            except services.InvalidRequest as exc:
                raise forms.ValidationError(exc.message) from None
        return value


class VECreateForm(ServiceCheckedForm):
    ostemplate = template_field()
    hostname = forms.CharField(required=False, max_length=253, label="Host name", help_text="e.g. web1.example.com")
    root_password = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="At least 8 characters; optional."
    )
    start = forms.BooleanField(required=False, initial=True, label="Start it when created")
    owner = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False,
                                   help_text="Admins only; default: you.")
    node = forms.ModelChoiceField(queryset=Node.objects.none(), required=False, to_field_name="name",
                                  empty_label="any (the least loaded that fits)",
                                  help_text="Admins only; default: the placement policy picks.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["ostemplate"].choices = template_choices(None, user)
        if user.is_panel_admin:
            self.fields["owner"].queryset = get_user_model().objects.filter(is_active=True).order_by("username")
            self.fields["node"].queryset = Node.objects.order_by("name")
        else:
            del self.fields["owner"]
            del self.fields["node"]

    def clean_hostname(self):
        return self.check("hostname", services.clean_hostname)

    def clean_root_password(self):
        return self.check("root_password", services.clean_password)

    def clean(self):
        data = super().clean()
        owner, name = data.get("owner"), data.get("ostemplate")
        if owner is not None and name and not Template.objects.usable_by(owner).filter(name=name).exists():
            self.add_error("ostemplate", f"{owner.get_username()} may not use the OS template {name}; choose one "
                                         "that is theirs or public.")
        return data


class HostnameForm(ServiceCheckedForm):
    hostname = forms.CharField(max_length=253, label="Host name")

    def clean_hostname(self):
        return self.check("hostname", services.clean_hostname)


class PasswordForm(ServiceCheckedForm):
    root_password = forms.CharField(widget=forms.PasswordInput, label="New root password")
    confirm = forms.CharField(widget=forms.PasswordInput, label="Repeat it")

    def clean_root_password(self):
        return self.check("root_password", services.clean_password)

    def clean(self):
        data = super().clean()
        if data.get("root_password") and data.get("root_password") != data.get("confirm"):
            self.add_error("confirm", "The two passwords differ.")
        return data


class ReinstallForm(ServiceCheckedForm):
    ostemplate = template_field()
    root_password = forms.CharField(required=False, widget=forms.PasswordInput, help_text="Optional.")
    confirm = forms.BooleanField(label="I understand that everything in this VE will be erased")

    def __init__(self, *args, ve, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The VE's files become its owner's: they must be from a template its owner may use (a student's VE:
        # their course's image; a customer's: never another course's), whoever asks.
        self.fields["ostemplate"].choices = template_choices(ve.node, ve.owner or user)
        self.fields["ostemplate"].initial = ve.ostemplate

    def clean_root_password(self):
        return self.check("root_password", services.clean_password)


class DestroyForm(forms.Form):
    confirm = forms.CharField(label="Type the CTID to confirm")
    delete_backups = forms.BooleanField(
        required=False, initial=False, label="Also delete its backups",
        help_text="Left unticked, its backups are kept: an admin can still restore them (you will not see them).",
    )

    def __init__(self, *args, ve, **kwargs):
        super().__init__(*args, **kwargs)
        self.ve = ve

    def clean_confirm(self):
        if self.cleaned_data["confirm"].strip() != str(self.ve.ctid):
            raise forms.ValidationError(f"Type {self.ve.ctid} to confirm that VE {self.ve.ctid} is to be destroyed.")
        return self.cleaned_data["confirm"]


SORTS = {
    "ctid": "ctid", "-ctid": "-ctid",
    "hostname": "hostname", "-hostname": "-hostname",
    "status": "status", "-status": "-status",
    "owner": "owner__username", "-owner": "-owner__username",
    "node": "node__name", "-node": "-node__name",
    "created": "created_at", "-created": "-created_at",
}


class VEFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", help_text="CTID, host name, owner or address")
    status = forms.ChoiceField(required=False, choices=[("", "any state")] + [
        c for c in VE.Status.choices if c[0] != VE.Status.DESTROYED])
    owner = forms.CharField(required=False, help_text="user name")
    node = forms.ModelChoiceField(queryset=Node.objects.all(), required=False, empty_label="any node",
                                  to_field_name="name")
    sort = forms.ChoiceField(required=False, choices=[(k, k) for k in SORTS])
    per_page = forms.TypedChoiceField(required=False, coerce=int, choices=[(n, n) for n in (25, 50, 100, 200)],
                                      empty_value=50)

    def apply(self, ves):
        """Return ves filtered and sorted by this (valid) form."""
        from django.db.models import Q

        data = self.cleaned_data
        q = data.get("q", "").strip()
        if q:
            rule = Q(hostname__icontains=q) | Q(owner__username__icontains=q) | Q(ip_addresses__icontains=q)
            if q.isdigit():
                rule |= Q(ctid=int(q))
            ves = ves.filter(rule)
        if data.get("status"):
            ves = ves.filter(status=data["status"])
        if data.get("owner"):
            ves = ves.filter(owner__username=data["owner"])
        if data.get("node"):
            ves = ves.filter(node=data["node"])
        return ves.order_by(SORTS.get(data.get("sort") or "ctid", "ctid"), "ctid")


class BulkForm(forms.Form):
    action = forms.ChoiceField(choices=[(a, a) for a in services.BULK_ACTIONS])
    ctids = forms.CharField(required=False)

    def __init__(self, data=None):
        super().__init__(data)
        self.ctid_list = []

    def clean(self):
        data = super().clean()
        try:
            self.ctid_list = sorted({int(c) for c in self.data.getlist("ctids")})
        except ValueError:
            raise forms.ValidationError("CTIDs are numbers.") from None
        if not self.ctid_list:
            raise forms.ValidationError("Select at least one VE.")
        return data


class SnapshotForm(ServiceCheckedForm):
    name = forms.CharField(required=False, max_length=200, label="Name",
                           help_text="Optional, e.g. before-upgrade: letters, digits, '.', '_', '-'. "
                                     "Default: the date and time.")
    description = forms.CharField(required=False, max_length=1000, label="Description", help_text="Optional.")

    def clean_name(self):
        return self.check("name", services.clean_snapshot_name)

    def clean_description(self):
        return self.check("description", services.clean_description)


class RestoreNewForm(ServiceCheckedForm):
    """Restore a backup as a new VE. Admins choose owner, CTID and whether the owner's plan may be exceeded."""

    owner = forms.CharField(required=False, max_length=150, label="Owner",
                            help_text="User name; default: the VE's (former) owner.")
    ctid = forms.CharField(required=False, max_length=20, label="New CTID", help_text="Default: the next free one.")
    hostname = forms.CharField(required=False, max_length=253, label="Host name",
                               help_text="Optional; default ve<CTID> (a destroyed VE brought back under its own "
                                         "CTID keeps its own).")
    start = forms.BooleanField(required=False, initial=True, label="Start it when restored")
    beyond_plan = forms.BooleanField(required=False, label="Even beyond the owner's plan",
                                     help_text="Restore it although the owner's plan allows no more VEs.")

    ADMIN_FIELDS = ("owner", "ctid", "beyond_plan")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        if not user.is_panel_admin:
            for name in self.ADMIN_FIELDS:
                del self.fields[name]

    def clean_owner(self):
        name = (self.cleaned_data.get("owner") or "").strip()
        if not name:
            return None
        user = get_user_model().objects.filter(username=name).select_related("plan").first()
        if user is None:
            raise forms.ValidationError(f"There is no user named {name!r}.")
        return user

    def clean_ctid(self):
        return self.check("ctid", services.clean_new_ctid) or None

    def clean_hostname(self):
        return self.check("hostname", services.clean_hostname)


class ConfirmForm(forms.Form):
    """A rollback or restore: the box must be ticked."""

    confirm = forms.BooleanField(error_messages={"required": "Tick the box to confirm: nothing was changed."})


# --- hosting: addresses, pools, SSH keys -------------------------------------------------------------


class AddressAddForm(forms.Form):
    version = forms.TypedChoiceField(choices=[(4, "IPv4"), (6, "IPv6")], coerce=int, initial=4, label="Family")
    address = forms.CharField(required=False, max_length=64, label="Address",
                              help_text="empty: the next free one of the node's pool")


class SSHPushForm(forms.Form):
    password_off = forms.BooleanField(required=False, label="Switch password log-in over SSH off (keys only)")


class SSHKeyForm(forms.Form):
    name = forms.CharField(max_length=64, label="Name", help_text="e.g. laptop")
    key = forms.CharField(max_length=16384, label="Public key",
                          help_text="one line from your .pub file: ssh-ed25519 AAAA... you@laptop")


class PoolForm(forms.ModelForm):
    class Meta:
        from vzpanel.nodes.models import IPPool

        model = IPPool
        fields = ["node", "name", "network", "kind", "gateway", "nameservers"]
