from django.conf import settings
from django.db import models

from .rules import DEFAULT_DISK_PERCENT, DEFAULT_MEMORY_PERCENT, KINDS


class Thresholds(models.Model):
    """Alert thresholds of a plan's VEs, or of one VE (which wins); without a row, the defaults (90%)."""

    plan = models.OneToOneField("plans.Plan", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="alert_thresholds")
    ve = models.OneToOneField("ves.VE", null=True, blank=True, on_delete=models.CASCADE,
                              related_name="alert_thresholds")
    memory_percent = models.PositiveSmallIntegerField(default=DEFAULT_MEMORY_PERCENT,
                                                      help_text="alert when memory reaches this % of the limit")
    disk_percent = models.PositiveSmallIntegerField(default=DEFAULT_DISK_PERCENT,
                                                    help_text="alert when disk reaches this % of the quota")

    class Meta:
        verbose_name_plural = "thresholds"
        constraints = [models.CheckConstraint(condition=models.Q(plan__isnull=False) | models.Q(ve__isnull=False),
                                              name="thresholds_of_a_plan_or_a_ve")]

    def __str__(self):
        return f"thresholds of {self.ve or self.plan}"


class Alert(models.Model):
    """One crossing: it fired at `since` and, once its condition went away, resolved at `resolved_at`."""

    kind = models.CharField(max_length=16, choices=list(KINDS.items()))
    ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    message = models.CharField(max_length=300)
    since = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-since", "-id"]
        indexes = [models.Index(fields=["resolved_at", "kind"])]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.message}"

    @property
    def firing(self) -> bool:
        return self.resolved_at is None

    @property
    def subject(self) -> str:
        return f"VE {self.ve.ctid}" if self.ve_id else f"node {self.node.name}" if self.node_id else "panel"


class VEAlertState(models.Model):
    """What the last pass saw of a VE (its status and counters), to tell what changed since."""

    ve = models.OneToOneField("ves.VE", on_delete=models.CASCADE, related_name="alert_state")
    seen = models.JSONField(default=dict)
    at = models.DateTimeField()


class AlertPreference(models.Model):
    """What a user wants to hear of by e-mail (every alert is always shown in the panel)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_preference")
    email = models.BooleanField("e-mail me", default=True)
    kinds = models.JSONField(default=list, blank=True, help_text="alert kinds to e-mail; empty: every kind")

    def wants(self, kind: str) -> bool:
        return self.email and (not self.kinds or kind in self.kinds)
