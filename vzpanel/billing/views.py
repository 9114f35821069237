"""Admins' pages: webhook endpoints (the secret shown once, when made) and each one's delivery log."""

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from vzpanel.audit import log as audit
from vzpanel.core.decorators import admin_required

from .models import EVENTS, WebhookEndpoint
from .webhooks import WebhookURLError, clean_url, new_secret, send


class EndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(choices=sorted(EVENTS.items()), required=False,
                                       widget=forms.CheckboxSelectMultiple,
                                       help_text="None ticked: every event.")

    url = forms.CharField(max_length=500, label="URL")  # checked by clean_url: its message says what is taken

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "events", "active"]
        help_texts = {"url": "http:// or https:// only. Deliveries go wherever you point them, inside your "
                             "network too: point them only at your billing system's receiver."}

    def clean_url(self):
        try:
            return clean_url(self.cleaned_data["url"])
        except WebhookURLError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin_required
def endpoint_list(request):
    form = EndpointForm(request.POST or None, initial={"active": True})
    if request.method == "POST" and form.is_valid():
        endpoint = form.save(commit=False)
        endpoint.secret = new_secret()
        endpoint.save()
        audit.record("webhook.create", request=request, detail=f"endpoint {endpoint.pk}: {endpoint.url}")
        # The secret is on this answer only (no redirect): the receiver needs it to verify signatures.
        return render(request, "billing/endpoint_detail.html", _detail(endpoint, EndpointForm(instance=endpoint),
                                                                       secret=endpoint.secret))
    endpoints = WebhookEndpoint.objects.all()
    return render(request, "billing/endpoint_list.html", {"endpoints": endpoints, "form": form,
                                                          "events": sorted(EVENTS.items())})


def _detail(endpoint, form, secret=""):
    return {"endpoint": endpoint, "form": form, "secret": secret,
            "deliveries": endpoint.deliveries.all()[:100]}


@admin_required
def endpoint_detail(request, pk):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    form = EndpointForm(request.POST or None, instance=endpoint)
    if request.method == "POST" and form.is_valid():
        form.save()
        audit.record("webhook.edit", request=request, detail=f"endpoint {endpoint.pk}: {endpoint.url}")
        messages.success(request, "Webhook endpoint saved.")
        return redirect("billing:webhook", pk=endpoint.pk)
    return render(request, "billing/endpoint_detail.html", _detail(endpoint, form))


@admin_required
@require_POST
def endpoint_test(request, pk):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    send("ping", {"endpoint": endpoint.pk, "by": request.user.get_username()}, endpoints=[endpoint])
    messages.info(request, "A ping event is on its way; its delivery shows below.")
    return redirect("billing:webhook", pk=endpoint.pk)


@admin_required
@require_POST
def endpoint_delete(request, pk):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    audit.record("webhook.delete", request=request, detail=f"endpoint {endpoint.pk}: {endpoint.url}")
    endpoint.delete()
    messages.success(request, "Webhook endpoint deleted.")
    return redirect("billing:webhooks")
