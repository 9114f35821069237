from django.conf import settings
from django.db import models
from django.db.models import Q


class TaskQuerySet(models.QuerySet):
    def visible_to(self, user) -> "TaskQuerySet":
        """Return the tasks user may see: those about VEs they may see (tasks with no VE: admins only)."""
        from vzpanel.ves.models import VE

        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_panel_admin:
            return self.all()
        return self.filter(ve__in=VE.objects.visible_to(user))

    def active(self) -> "TaskQuerySet":
        return self.filter(status__in=Task.ACTIVE)


class Task(models.Model):
    """One background action on a VE, run by the VE's node agent."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        ERRORED = "errored", "errored"
        CANCELLED = "cancelled", "cancelled"

    class Action(models.TextChoices):
        CREATE = "create", "create"
        START = "start", "start"
        STOP = "stop", "stop"
        RESTART = "restart", "restart"
        REINSTALL = "reinstall", "reinstall"
        SET_PASSWORD = "set_password", "set root password"
        SET_HOSTNAME = "set_hostname", "set hostname"
        SET_LIMITS = "set_limits", "set limits"
        DESTROY = "destroy", "destroy"
        SNAPSHOT = "snapshot", "take snapshot"
        SNAPSHOT_ROLLBACK = "snapshot_rollback", "roll back to snapshot"
        SNAPSHOT_DELETE = "snapshot_delete", "delete snapshot"
        BACKUP = "backup", "back up"
        RESTORE = "restore", "restore backup"
        RESTORE_NEW = "restore_new", "restore backup as a new VE"
        BACKUP_DELETE = "backup_delete", "delete backup"
        ADDRESS_ADD = "address_add", "add IP address"
        ADDRESS_DEL = "address_del", "remove IP address"
        SSH_KEYS = "ssh_keys", "set SSH keys"
        SET_FIREWALL = "set_firewall", "set firewall"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.COMPLETED, Status.FAILED, Status.ERRORED, Status.CANCELLED)

    ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.CASCADE, related_name="tasks")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="tasks")
    action = models.CharField(max_length=32)
    params = models.JSONField(default=dict, blank=True, help_text="never holds secrets")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=300, blank=True)
    log = models.TextField(blank=True)
    log_lines = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="what went wrong, for the user")
    error_ref = models.CharField(max_length=16, blank=True, db_index=True)
    traceback = models.TextField(blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True)
    # A bulk operation (a whole class at once) is one parent task with one child task per VE.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["ve", "status"])]
        constraints = [
            # One operation at a time per VE: a second active task on the same VE cannot exist.
            models.UniqueConstraint(
                fields=["ve"], condition=Q(status__in=["queued", "running"]), name="one_active_task_per_ve"
            )
        ]

    def __str__(self):
        return f"Task {self.pk}: {self.get_action_display()}"

    def get_action_display(self) -> str:
        from .actions import LABELS

        try:
            return self.Action(self.action).label
        except ValueError:
            return LABELS.get(self.action, self.action)

    @property
    def group_name(self) -> str:
        return f"task-{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    def to_event(self, with_log: bool = False) -> dict:
        """Return the task as the browser's live view gets it."""
        event = {
            "id": self.pk,
            "ve": self.ve.ctid if self.ve_id and self.ve else None,
            "action": self.action,
            "action_label": self.get_action_display(),
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "error_ref": self.error_ref,
            "log_lines": self.log_lines,
            "finished": self.status in self.FINISHED,
        }
        if with_log:
            event["log"] = self.log
        return event
