from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

# The events a webhook endpoint can ask for (vzpanel/billing/events.py sends them).
EVENTS = {
    "ve.created": "a VE was created (its create task finished)",
    "ve.status_changed": "a VE started, stopped, was suspended or went missing",
    "ve.destroyed": "a VE was destroyed",
    "ve.locked": "a VE was locked against its owner (billing suspension, traffic)",
    "ve.unlocked": "a VE's lock was lifted",
    "task.succeeded": "a task completed",
    "task.failed": "a task failed or errored",
}


class BillingService(models.Model):
    """A billing system's service (WHMCS's service id, say) mapped to the customer and VE it was made into.

    The external id is the billing system's key for every call; it is never reused (a terminated service
    keeps its row, so a late retry of its create does not make a second VE).
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        SUSPENDED = "suspended", "suspended"
        TERMINATED = "terminated", "terminated"

    external_id = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="billing_services")
    ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    plan = models.ForeignKey("plans.Plan", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    lock = models.CharField(max_length=200, blank=True, help_text="the VE.locked text this service set")
    last_call = models.ForeignKey("BillingCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"billing service {self.external_id}"


class BillingCall(models.Model):
    """One call that changed a service, kept so that its retry answers the same and changes nothing.

    ``body`` is the request as received, secrets replaced by keyed hashes (vzpanel.billing.services); ``answer``
    the answer given, without any password. ``request_id`` is the caller's own key for the call (optional).
    """

    service = models.ForeignKey(BillingService, on_delete=models.CASCADE, related_name="calls")
    call = models.CharField(max_length=16)
    request_id = models.CharField(max_length=100, blank=True)
    body = models.JSONField(default=dict)
    status_code = models.PositiveSmallIntegerField()
    answer = models.JSONField(default=dict)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["service", "call", "request_id"], condition=~Q(request_id=""),
                                               name="unique_billing_request_id")]


class WebhookEndpoint(models.Model):
    """A URL that gets the events it asked for, signed with its secret (shown once, when made)."""

    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=100)
    events = models.JSONField(default=list, help_text="event names; empty: every event")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return self.url

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class WebhookDelivery(models.Model):
    """One event on its way to one endpoint: every attempt's outcome is written here (the delivery log)."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    event_id = models.CharField(max_length=40, db_index=True)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="the last answer's HTTP status")
    response = models.CharField(max_length=500, blank=True, help_text="the last answer's start, or why none came")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["endpoint", "-created_at"])]

    def __str__(self):
        return f"{self.event} to {self.endpoint_id} ({self.status})"

    def finish(self, status: str, code, note: str) -> None:
        self.status, self.status_code, self.response = status, code, (note or "")[:500]
        self.finished_at = timezone.now()
        self.next_attempt_at = None
        self.save()
