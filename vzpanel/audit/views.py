from datetime import datetime, time

from django import forms
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone

from vzpanel.core.decorators import admin_required, is_htmx

from .models import AuditEntry


class AuditSearchForm(forms.Form):
    q = forms.CharField(required=False, label="Search", help_text="user, action, CTID, address or detail")
    action = forms.CharField(required=False)
    result = forms.ChoiceField(required=False, choices=[("", "any result"), *AuditEntry.Result.choices])
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


def search(entries, data: dict):
    """Return entries matching the search form's cleaned data."""
    q = data.get("q", "").strip()
    if q:
        rule = Q(username__icontains=q) | Q(action__icontains=q) | Q(detail__icontains=q)
        if q.isdigit():
            rule |= Q(ctid=int(q)) | Q(task_id=int(q))
        if q.count(".") == 3 or ":" in q:
            rule |= Q(ip=q)
        entries = entries.filter(rule)
    if data.get("action"):
        entries = entries.filter(action__startswith=data["action"])
    if data.get("result"):
        entries = entries.filter(result=data["result"])
    tz = timezone.get_current_timezone()
    if data.get("since"):
        entries = entries.filter(at__gte=datetime.combine(data["since"], time.min, tz))
    if data.get("until"):
        entries = entries.filter(at__lte=datetime.combine(data["until"], time.max, tz))
    return entries


@admin_required
def audit_list(request):
    form = AuditSearchForm(request.GET or None)
    entries = AuditEntry.objects.select_related("task")
    if form.is_valid():
        entries = search(entries, form.cleaned_data)
    page = Paginator(entries, 50).get_page(request.GET.get("page"))
    template = "audit/_table.html" if is_htmx(request) else "audit/audit_list.html"
    return render(request, template, {"form": form, "page": page}, status=400 if form.errors else 200)
