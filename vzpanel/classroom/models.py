import hashlib
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.utils import timezone

from vzpanel.ves.models import register_ve_rule


class CourseQuerySet(models.QuerySet):
    def visible_to(self, user) -> "CourseQuerySet":
        """Return the courses user may see: the classroom's one permission rule.

        Admins see every course; a teacher their own; an assistant or a student the courses they are
        enrolled in. Anyone else sees none.
        """
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_panel_admin:
            return self.all()
        return self.filter(Q(teacher=user) | Q(memberships__user=user)).distinct()

    def open(self) -> "CourseQuerySet":
        """Return the courses still in use: running, or closed at their end date with their VEs kept.

        A course being archived or ended is not open: its golden images are hidden from all but admins.
        """
        return self.filter(Q(status=Course.Status.ACTIVE) | Q(status=Course.Status.ENDING, closed_at__isnull=False))


class Course(models.Model):
    """A class: its teacher, roster, golden image, plan, quota, schedule and idle policy."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        ENDING = "ending", "ending (archiving)"
        ENDED = "ended", "ended"

    class ImageKind(models.TextChoices):
        TEMPLATE = "template", "an OS template"
        VE = "ve", "a VE of the teacher's, frozen"

    class Sleep(models.TextChoices):
        SUSPEND = "suspend", "suspend (keep running programs, CRIU)"
        STOP = "stop", "stop"

    name = models.CharField(max_length=100)
    teacher = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="courses_taught")
    # The node all its students' VEs go to; empty: spread, each student's VE where the placement policy puts it
    # (vzpanel.nodes.place). A golden image frozen from a VE lives on that VE's node, so it needs one node.
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="courses",
                             help_text="where its students' VEs go; empty: spread over the nodes")
    plan = models.ForeignKey("plans.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="courses",
                             help_text="resources of each student's VE")
    # The golden image: every student VE is built from `ostemplate`; a frozen VE becomes a local template.
    image_kind = models.CharField(max_length=16, choices=ImageKind.choices, default=ImageKind.TEMPLATE)
    ostemplate = models.CharField("golden image (template)", max_length=100)
    image_ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                 help_text="the teacher's VE the image was frozen from")
    image_version = models.PositiveIntegerField(default=0)
    image_updated_at = models.DateTimeField(null=True, blank=True)
    # Quota, checked before bulk provisioning starts (empty: no limit).
    max_ves = models.PositiveIntegerField("VEs allowed", default=100)
    max_ram_mb = models.PositiveIntegerField("RAM allowed (MB, all VEs)", null=True, blank=True)
    max_disk_gb = models.PositiveIntegerField("disk allowed (GB, all VEs)", null=True, blank=True)
    ssh_access = models.BooleanField("SSH port forward per student", default=True)
    idle_minutes = models.PositiveIntegerField("idle after (minutes, 0: never)", default=0)
    idle_action = models.CharField(max_length=8, choices=Sleep.choices, default=Sleep.SUSPEND)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    ends_on = models.DateField(null=True, blank=True)
    archive = models.JSONField(default=list, blank=True, help_text="backups written when the course ended")
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Set when the end date passed and the classroom tick closed the course (status `ending`): the students'
    # VEs were stopped and stay, students cannot start them; the teacher extends (re-opens) or archives.
    closed_at = models.DateTimeField(null=True, blank=True,
                                     help_text="when the course closed itself because its end date passed")

    objects = CourseQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name

    @property
    def home_node(self):
        """The node its class-wide tasks are filed under: its own, or the panel's for a spread course."""
        from vzpanel.nodes.models import Node

        return self.node if self.node_id else Node.local()

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def is_closed(self) -> bool:
        """Its end date passed: VEs stopped but kept; the teacher may extend (re-open) it or archive it."""
        return self.status == self.Status.ENDING and self.closed_at is not None

    @property
    def state_label(self) -> str:
        if self.is_closed:
            return "ended (end date passed)"
        return self.get_status_display()

    def image_label(self) -> str:
        if self.image_kind == self.ImageKind.VE:
            return f"{self.ostemplate} (frozen VE, version {self.image_version})"
        return self.ostemplate

    def template_name(self, version: int) -> str:
        """The name of this course's golden image number `version` on its node."""
        return f"course{self.pk}-v{version}"

    def students(self):
        return self.memberships.filter(role=Membership.Role.STUDENT)

    def governed_students(self):
        """Return the students whose accounts the teacher may act on (links, passwords): student accounts only.

        A customer's, teacher's or admin's account never comes under a teacher, whatever its membership says
        (rows the roster made before it refused such accounts).
        """
        return self.students().filter(user__role="student", user__is_superuser=False, user__is_active=True)


class Membership(models.Model):
    """A user in a course: a student (with their VE) or an assistant."""

    class Role(models.TextChoices):
        STUDENT = "student", "student"
        ASSISTANT = "assistant", "assistant"

    class Sleep(models.TextChoices):
        AWAKE = "", "awake"
        IDLE = "idle", "put to sleep for being idle"
        SCHEDULE = "schedule", "put to sleep after a lab session"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="course_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STUDENT)
    group = models.CharField(max_length=64, blank=True)
    display_name = models.CharField(max_length=150, blank=True)
    created_account = models.BooleanField(default=False, help_text="the account was made for this course")
    ve = models.ForeignKey("ves.VE", null=True, blank=True, on_delete=models.SET_NULL, related_name="memberships")
    ssh_port = models.PositiveIntegerField(null=True, blank=True)
    # What the node last saw of the VE (the classroom tick): for the dashboard and the idle policy.
    usage = models.JSONField(default=dict, blank=True)
    sampled_at = models.DateTimeField(null=True, blank=True)
    activity_at = models.DateTimeField(null=True, blank=True, help_text="last sign of use: CPU, login, console")
    console_at = models.DateTimeField(null=True, blank=True)
    asleep = models.CharField(max_length=8, choices=Sleep.choices, default=Sleep.AWAKE, blank=True)
    asleep_how = models.CharField(max_length=8, blank=True, help_text="suspended or stopped")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["group", "display_name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["course", "user"], name="one_membership_per_course"),
            models.UniqueConstraint(fields=["ssh_port"], condition=Q(ssh_port__isnull=False), name="unique_ssh_port"),
        ]

    def __str__(self):
        return f"{self.user} in {self.course}"

    @property
    def name(self) -> str:
        return self.display_name or self.user.get_full_name() or self.user.get_username()

    @property
    def live_ve(self):
        ve = self.ve
        return ve if ve is not None and ve.is_live else None


class LabSession(models.Model):
    """A lab session: the class's VEs start `lead_minutes` before it and stop or suspend after it."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="sessions")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    lead_minutes = models.PositiveIntegerField(default=5)
    after = models.CharField(max_length=8, choices=Course.Sleep.choices, default=Course.Sleep.STOP)
    started = models.BooleanField(default=False)
    ended = models.BooleanField(default=False)

    class Meta:
        ordering = ["starts_at"]

    def __str__(self):
        return f"{self.course}: {self.starts_at:%Y-%m-%d %H:%M}-{self.ends_at:%H:%M}"

    def wake_at(self):
        return self.starts_at - timedelta(minutes=self.lead_minutes)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class LoginLink(models.Model):
    """A one-time sign-in link for a student; only its hash is stored, the link is printed once."""

    LIFETIME = timedelta(days=14)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="login_links")
    course = models.ForeignKey(Course, null=True, blank=True, on_delete=models.CASCADE, related_name="login_links")
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @classmethod
    def issue(cls, user, course=None, created_by=None) -> tuple["LoginLink", str]:
        """Create a link for user, dropping their unused older ones; return it with the plain key.

        A course's link is for a student account enrolled in it (ValueError otherwise): it is a way into
        that account, which a teacher has only through the course.
        """
        if course is not None and not course.governed_students().filter(user=user).exists():
            raise ValueError(f"{user.get_username()} is not a student of course {course.pk}; no sign-in link for them.")
        cls.objects.filter(user=user, used_at__isnull=True).delete()
        key = secrets.token_urlsafe(24)
        link = cls.objects.create(user=user, course=course, key_hash=_hash(key), created_by=created_by,
                                  expires_at=timezone.now() + cls.LIFETIME)
        return link, key

    @classmethod
    def redeem(cls, key: str):
        """Mark the unused, unexpired link with this key used and return its user, or None."""
        now = timezone.now()
        link = cls.objects.select_related("user").filter(key_hash=_hash(key or "")).first()
        if link is None or link.expires_at <= now or not link.user.is_active or not link.still_enrolled():
            return None
        used = cls.objects.filter(pk=link.pk, used_at__isnull=True).update(used_at=now)
        return link.user if used else None

    @classmethod
    def find(cls, key: str):
        link = cls.objects.select_related("user").filter(key_hash=_hash(key or "")).first()
        if link is None or link.used_at or link.expires_at <= timezone.now() or not link.still_enrolled():
            return None
        return link

    def still_enrolled(self) -> bool:
        """A course's link works only while its user is a student of that course (leaving it ends the link)."""
        if self.course_id is None:
            return True
        return Membership.objects.filter(course_id=self.course_id, user_id=self.user_id, role=Membership.Role.STUDENT,
                                         user__role="student").exists()


# --- a course's golden images are the course's -------------------------------------------------------

COURSE_IMAGE_RE = re.compile(r"^course(\d+)-v\d+$")  # Course.template_name


@receiver(pre_save, sender="nodes.Template")
def claim_course_image(sender, instance, **kwargs):
    """A new template named as a course's golden image belongs to that course (seen by its people only).

    The image job and the node reconcile write template rows by name; this makes every such row the
    course's, and one whose course is gone an admins-only one, so a frozen VE never becomes public.
    """
    if not instance._state.adding or instance.course_id is not None:
        return
    match = COURSE_IMAGE_RE.match(instance.name or "")
    if match is None:
        return
    course = Course.objects.filter(pk=int(match.group(1))).only("pk", "teacher_id").first()
    if course is None:
        instance.visibility = sender.Visibility.ADMINS
        return
    instance.course, instance.owner_id, instance.visibility = course, course.teacher_id, sender.Visibility.COURSE


def _course_ve_rule(user):
    from .access import ve_rule

    return ve_rule(user)


register_ve_rule(_course_ve_rule)
