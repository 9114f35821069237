from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

CTID_MIN = 100
CTID_MAX = 999_999_999


# Other apps may let a user see VEs that are not theirs (the classroom: a teacher sees the VEs of their
# courses' students). A rule is called as rule(user) and returns a Q over VE, or None (nothing more).
VE_RULES: list = []


def register_ve_rule(rule) -> None:
    """Add a rule that widens what a (non-admin) user sees; see VEQuerySet.visible_to."""
    if rule not in VE_RULES:
        VE_RULES.append(rule)


class VEQuerySet(models.QuerySet):
    def visible_to(self, user) -> "VEQuerySet":
        """Return the VEs user may see and act on: the one object-permission rule of the panel.

        Admins see every VE; anyone else their own, plus what a registered rule grants them (a
        teacher the VEs of their current students in their courses, an assistant those of the
        courses they assist). Nothing else: not an account's `teacher` link on its own.
        """
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_panel_admin:
            return self.all()
        rule = Q(owner=user)
        extra = [q for q in (r(user) for r in VE_RULES) if q is not None]
        if not extra:
            return self.filter(rule)
        for q in extra:
            rule |= q
        return self.filter(pk__in=VE.objects.filter(rule).values("pk"))

    def live(self) -> "VEQuerySet":
        """Return VEs that have not been destroyed."""
        return self.exclude(status=VE.Status.DESTROYED)


class VE(models.Model):
    """A virtual environment: ownership and desired settings; the engine holds the truth on state."""

    class Status(models.TextChoices):
        CREATING = "creating", "creating"
        RUNNING = "running", "running"
        STOPPED = "stopped", "stopped"
        SUSPENDED = "suspended", "suspended"
        RESCUE = "rescue", "in rescue"
        MISSING = "missing", "missing"
        DESTROYED = "destroyed", "destroyed"

    # "ctid" is a system column of every PostgreSQL table: the column takes another name.
    ctid = models.PositiveIntegerField(
        "CTID", validators=[MinValueValidator(CTID_MIN), MaxValueValidator(CTID_MAX)], db_column="ve_ctid"
    )
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="ves")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="ves"
    )
    hostname = models.CharField(max_length=253, blank=True)
    ostemplate = models.CharField("OS template", max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATING)
    ip_addresses = models.JSONField(default=list, blank=True)
    locked = models.CharField(
        max_length=200, blank=True,
        help_text="Why the VE is locked against its owner (e.g. suspended by billing, or over its traffic); "
                  "empty: not locked. A locked VE stays stopped and its owner cannot start or change it.")
    nproc = models.PositiveIntegerField(null=True, blank=True)
    limits = models.JSONField(default=dict, blank=True, help_text="plan limits at creation")
    usage = models.JSONField(default=dict, blank=True)
    usage_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    objects = VEQuerySet.as_manager()

    class Meta:
        ordering = ["ctid"]
        verbose_name = "VE"
        constraints = [
            models.UniqueConstraint(
                fields=["ctid"], condition=~Q(status="destroyed"), name="unique_live_ctid"
            )
        ]
        indexes = [
            models.Index(fields=["status", "ctid"], name="ves_ve_status_a9facc_idx"),
            models.Index(fields=["owner", "status"]),
            models.Index(fields=["hostname"]),
        ]

    def __str__(self):
        return f"VE {self.ctid}" + (f" ({self.hostname})" if self.hostname else "")

    @property
    def is_live(self) -> bool:
        return self.status != self.Status.DESTROYED

    @property
    def group_name(self) -> str:
        return f"ve-{self.pk}"

    def apply_info(self, info) -> list[str]:
        """Copy what the engine reports (a VEInfo) onto this row; return the changed fields."""
        fields = {
            "status": info.status,
            "hostname": info.hostname or "",
            "ostemplate": info.ostemplate or self.ostemplate,
            "ip_addresses": list(info.ip_addresses or []),
            "nproc": info.nproc,
        }
        changed = [name for name, value in fields.items() if getattr(self, name) != value]
        for name in changed:
            setattr(self, name, fields[name])
        return changed


class Snapshot(models.Model):
    """A snapshot of a VE's files as its node's engine last reported it (rows written by the node agent's jobs)."""

    ve = models.ForeignKey(VE, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    ve_state = models.CharField(max_length=16, blank=True, help_text="the VE's state when it was taken")
    size_bytes = models.BigIntegerField(null=True, blank=True, help_text="bytes its files take")
    exclusive_bytes = models.BigIntegerField(null=True, blank=True, help_text="bytes deleting it frees")
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "name"]
        constraints = [models.UniqueConstraint(fields=["ve", "name"], name="unique_snapshot_name_per_ve")]

    def __str__(self):
        return f"snapshot {self.name} of VE {self.ve.ctid}"


class BackupQuerySet(models.QuerySet):
    def kept(self) -> "BackupQuerySet":
        """Return the backups whose file is (still) on the node: not deleted."""
        return self.filter(deleted_at__isnull=True)


class Backup(models.Model):
    """A backup archive of a VE on its node (written, verified and deleted by the node agent's jobs).

    Rows outlive their VE (a destroyed VE's kept backups); only admins reach those (ves.access).
    A deleted backup keeps its row (deleted_at set) so that a second delete is refused in words.
    """

    ve = models.ForeignKey(VE, on_delete=models.CASCADE, related_name="backups")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="backups")
    ctid = models.PositiveIntegerField("CTID", db_column="ve_ctid")
    path = models.CharField(max_length=1000, help_text="the archive on the node")
    size_bytes = models.BigIntegerField(default=0)
    files = models.PositiveIntegerField(null=True, blank=True)
    data_bytes = models.BigIntegerField(null=True, blank=True, help_text="bytes of file data in it")
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    verified_at = models.DateTimeField(null=True, blank=True, help_text="when its checksums were last checked")
    automatic = models.BooleanField(default=False, help_text="made by the plan's daily backup")
    task = models.ForeignKey("tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_why = models.CharField(max_length=200, blank=True)

    objects = BackupQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["ve", "deleted_at"])]

    def __str__(self):
        return f"backup {self.pk} of VE {self.ctid}"

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None
