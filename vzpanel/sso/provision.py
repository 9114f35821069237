"""Find or create the panel user for a directory account, and give it the role its groups map to."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from vzpanel.audit import log as audit

from .models import SSOIdentity

LOWEST_ROLE = "student"


class Refused(PermissionDenied):
    """A sign-in that the directory or provider allowed but the panel does not; says why in words."""

    def __init__(self, message: str, *, username: str = "", demote=None):
        super().__init__(message)
        self.message = message
        self.username = username
        self.demote = demote  # an existing SSO user whose mapping is gone: strip its rights


def map_role(values: Iterable[str], mapping: list[tuple[str, str]], default: str | None) -> str | None:
    """Return the role of the first mapping entry whose key is among values, else default."""
    present = set(values)
    for key, role in mapping:
        if key in present:
            return role
    return default


def apply_role(user, role: str) -> None:
    """Set the user's role; admin rights only ever come from the role itself."""
    user.role = role
    user.is_superuser = False
    user.is_staff = role == get_user_model().Role.ADMIN


def find_user(*, source: str, subject: str, username: str, role: str | None, label: str):
    """Return (user, identity or None): the user this account signs in as, with its role set, unsaved.

    Raises Refused when the name belongs to a local account (or another sign-on's) or no role applies.
    """
    User = get_user_model()
    identity = SSOIdentity.objects.select_related("user").filter(source=source, subject=subject).first()
    if identity is not None:
        user = identity.user
    else:
        if User.objects.filter(username__iexact=username).exists():
            raise Refused(
                f"The panel already has an account named {username} that was not created by {label}. "
                "Log in with its password, or ask an admin.",
                username=username,
            )
        if not username or len(username) > 150:
            raise Refused(f"{label} gave no usable user name; ask an admin.", username=username[:150])
        try:
            User.username_validator(username)
        except Exception:
            raise Refused(
                f"{label} gave the user name {username!r}, which the panel cannot use; ask an admin.",
                username=username[:150],
            ) from None
        user = User(username=username)
        user.set_unusable_password()
    if role is None:
        raise Refused(
            f"Your {label} account is in no group that has a role in this panel. Ask an admin to add you to one.",
            username=user.username,
            demote=user if identity is not None else None,
        )
    apply_role(user, role)
    return user, identity


def link(user, *, source: str, subject: str, label: str, request=None) -> None:
    """Record that user signs in through this source (creating the link on first sign-in)."""
    identity, created = SSOIdentity.objects.get_or_create(
        user=user, defaults={"source": source, "subject": subject}
    )
    if identity.source != source or identity.subject != subject:
        # find_user only hands out users linked to this subject or new ones; anything else is a bug.
        raise PermissionDenied(f"user {user.username} is linked to another sign-on")
    identity.last_sign_in = timezone.now()
    identity.save(update_fields=["last_sign_in"])
    if created:
        audit.record("user.create", user=user, request=request, detail=f"user {user.username} ({user.role}) by {label}")


def refuse(request, exc: Refused, *, label: str) -> None:
    """Strip the rights of a user whose mapping is gone, and tell the person signing in why they cannot."""
    if exc.demote is not None:
        with transaction.atomic():
            user = type(exc.demote).objects.select_for_update().get(pk=exc.demote.pk)
            if user.role != LOWEST_ROLE or user.is_staff or user.is_superuser:
                apply_role(user, LOWEST_ROLE)
                user.save(update_fields=["role", "is_staff", "is_superuser"])
                audit.record("user.update", user=user, ip=audit.client_ip(request),
                             detail=f"user {user.username}: role {LOWEST_ROLE}, no longer in a mapped {label} group")
    if request is not None and hasattr(request, "_messages"):
        messages.error(request, exc.message)
