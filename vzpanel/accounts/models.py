import hashlib
import secrets

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A panel user; `role` decides what they see, `plan` what they may create."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        CUSTOMER = "customer", "Customer"
        TEACHER = "teacher", "Teacher"
        STUDENT = "student", "Student"
        RESELLER = "reseller", "Reseller"

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CUSTOMER)
    plan = models.ForeignKey(
        "plans.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    teacher = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="students",
        limit_choices_to={"role": "teacher"},
    )
    reseller = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="customers",
        limit_choices_to={"role": "reseller"},
        help_text="The reseller this customer belongs to; empty: the admins' own customer.",
    )

    @property
    def is_panel_admin(self) -> bool:
        return self.is_superuser or self.role == self.Role.ADMIN

    def save(self, *args, **kwargs):
        if self.role == self.Role.ADMIN:
            self.is_staff = True
        super().save(*args, **kwargs)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class APIToken(models.Model):
    """A per-user API key; only its hash is stored, the key is shown once."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=8, choices=[("full", "full: read and change"), ("read", "read-only")],
                             default="full", help_text="a read-only token may only read (GET, HEAD, OPTIONS)")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def expired(self) -> bool:
        from django.utils import timezone

        return self.expires_at is not None and self.expires_at <= timezone.now()

    @classmethod
    def issue(cls, user, name: str, scope: str = "full", days: int | None = None) -> tuple["APIToken", str]:
        """Create a token for user (read-only with scope "read", expiring after ``days``); return it with its key."""
        from datetime import timedelta

        from django.utils import timezone

        key = "vzp_" + secrets.token_urlsafe(32)
        expires = timezone.now() + timedelta(days=days) if days else None
        token = cls.objects.create(user=user, name=name, prefix=key[:10], key_hash=_hash(key), scope=scope,
                                   expires_at=expires)
        return token, key

    @classmethod
    def find(cls, key: str):
        """Return the token whose key this is, or None."""
        return cls.objects.select_related("user").filter(key_hash=_hash(key)).first()


class SSHKey(models.Model):
    """A public key of a user, put into root's authorized_keys of their VEs."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=64)
    key = models.TextField(help_text="one public key line: TYPE BASE64 [COMMENT]")
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["user", "fingerprint"], name="unique_ssh_key_per_user")]

    def __str__(self):
        return f"{self.name} ({self.fingerprint})"
