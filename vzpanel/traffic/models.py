"""A VE's traffic per calendar month, and the meter that turns the node's counters into it."""

from django.db import models


class TrafficMonth(models.Model):
    """Bytes a VE received and sent in one calendar month (UTC), and what its plan allowed then."""

    class Action(models.TextChoices):
        NONE = "", "none"
        THROTTLE = "throttle", "throttled"
        SUSPEND = "suspend", "stopped and locked"

    ve = models.ForeignKey("ves.VE", on_delete=models.CASCADE, related_name="traffic_months")
    month = models.DateField(help_text="the month's first day")
    bytes_in = models.BigIntegerField(default=0, help_text="received by the VE")
    bytes_out = models.BigIntegerField(default=0, help_text="sent by the VE")
    quota_bytes = models.BigIntegerField(default=0, help_text="the plan's quota that month; 0: unlimited")
    over_at = models.DateTimeField(null=True, blank=True, help_text="when the VE went over its quota")
    action = models.CharField(max_length=8, blank=True, choices=Action.choices,
                              help_text="what was done when it went over")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-month"]
        constraints = [models.UniqueConstraint(fields=["ve", "month"], name="unique_traffic_month_per_ve")]

    def __str__(self):
        return f"traffic of VE {self.ve.ctid} in {self.month:%Y-%m}"

    @property
    def used_bytes(self) -> int:
        return self.bytes_in + self.bytes_out


class TrafficMeter(models.Model):
    """The last reading of a VE's counters, and what the panel did about its quota (to undo it in time).

    ``enforced`` is what is in force now; ``enforced_month`` the month it was done for, so that a VE an
    admin let go early is not cut again in the same month.
    """

    ve = models.OneToOneField("ves.VE", on_delete=models.CASCADE, primary_key=True, related_name="traffic_meter")
    read_at = models.DateTimeField(null=True, blank=True)
    total_in = models.BigIntegerField(default=0)
    total_out = models.BigIntegerField(default=0)
    run = models.CharField(max_length=80, blank=True, help_text="the VE network's run the counters belong to")
    run_in = models.BigIntegerField(default=0)
    run_out = models.BigIntegerField(default=0)
    enforced = models.CharField(max_length=8, blank=True, choices=TrafficMonth.Action.choices)
    enforced_month = models.DateField(null=True, blank=True)
    throttle_kbit = models.PositiveIntegerField(null=True, blank=True, help_text="the rate the panel set")
    rate_before = models.CharField(max_length=16, blank=True, help_text="the VE's own rate before (empty: default)")
    lock_reason = models.CharField(max_length=200, blank=True, help_text="the lock the panel set")
    was_running = models.BooleanField(default=False, help_text="running when it was stopped: started again after")

    def __str__(self):
        return f"traffic meter of VE {self.ve.ctid}"
