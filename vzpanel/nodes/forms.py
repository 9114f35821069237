"""The admins' node forms: adding a node (its name and how it reaches the panel's Redis)."""

import os
import re

from django import forms

from .join import JoinError, check_name
from .models import Node

HOST_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9a-fA-F:.]{2,45}\])$")


class AddNodeForm(forms.Form):
    name = forms.CharField(max_length=63, help_text="Lower-case letters, digits and hyphens, e.g. node2.")
    description = forms.CharField(max_length=200, required=False)
    redis_host = forms.CharField(
        max_length=253, label="Panel address",
        help_text="The address the new node reaches the panel's Redis on (<code>serve --redis-listen</code>).")
    redis_port = forms.IntegerField(min_value=1, max_value=65535, initial=6380, label="Redis port")
    tls = forms.BooleanField(required=False, initial=True, label="Over TLS",
                             help_text="Leave on unless serve runs with <code>--no-tls</code>.")
    vz_root = forms.CharField(max_length=200, initial="/var/lib/vz", label="Engine root on the new node")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("initial", {}).setdefault("redis_host", os.environ.get("VZPANEL_REDIS_HOST", ""))
        super().__init__(*args, **kwargs)

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        try:
            check_name(name)
        except JoinError as exc:
            raise forms.ValidationError(str(exc)) from None
        if Node.objects.filter(name=name).exists():
            raise forms.ValidationError(f"There is already a node {name}; choose another name.")
        return name

    def clean_redis_host(self):
        host = self.cleaned_data["redis_host"].strip()
        if not HOST_RE.match(host):
            raise forms.ValidationError("Give a host name or an address (IPv6 in brackets).")
        return host

    def clean_vz_root(self):
        root = self.cleaned_data["vz_root"].strip()
        if not re.fullmatch(r"/[A-Za-z0-9._/-]*", root):
            raise forms.ValidationError("Give an absolute path without spaces or quotes.")
        return root
