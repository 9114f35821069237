from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    """One change (or attempt) in the panel: who, what, which VE, when, from where, result."""

    class Result(models.TextChoices):
        OK = "ok", "ok"
        QUEUED = "queued", "queued"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        ERRORED = "errored", "errored"
        CANCELLED = "cancelled", "cancelled"
        DENIED = "denied", "denied"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    ctid = models.PositiveIntegerField(null=True, blank=True, db_index=True, db_column="ve_ctid")
    ip = models.GenericIPAddressField(null=True, blank=True)
    result = models.CharField(max_length=16, choices=Result.choices, default=Result.OK)
    detail = models.CharField(max_length=500, blank=True)
    task = models.ForeignKey("tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["action", "ip", "at"]), models.Index(fields=["action", "username", "at"])]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or 'system'} {self.action} {self.result}"
