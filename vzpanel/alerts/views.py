from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render

from .models import AlertPreference
from .rules import KINDS
from .services import visible_alerts


def dashboard_context(request) -> dict:
    alerts = visible_alerts(request.user).select_related("ve", "node")
    return {"firing": list(alerts.filter(resolved_at__isnull=True)[:10]),
            "recent": list(alerts.filter(resolved_at__isnull=False)[:5])}


@login_required
def alert_list(request):
    alerts = visible_alerts(request.user).select_related("ve", "node")
    if request.GET.get("state") == "firing":
        alerts = alerts.filter(resolved_at__isnull=True)
    page = Paginator(alerts, 50).get_page(request.GET.get("page"))
    return render(request, "alerts/alert_list.html", {"page": page, "state": request.GET.get("state", "")})


class PreferenceForm(forms.ModelForm):
    kinds = forms.MultipleChoiceField(choices=list(KINDS.items()), required=False, widget=forms.CheckboxSelectMultiple,
                                      label="Kinds to e-mail", help_text="none ticked: every kind")

    class Meta:
        model = AlertPreference
        fields = ["email", "kinds"]


@login_required
def preferences(request):
    pref, _ = AlertPreference.objects.get_or_create(user=request.user)
    form = PreferenceForm(request.POST or None, instance=pref)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Alert preferences saved.")
        return redirect("alerts:preferences")
    return render(request, "alerts/preferences.html", {"form": form, "has_email": bool(request.user.email)})
