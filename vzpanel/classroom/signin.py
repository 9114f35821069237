"""Sign-in sheets for a class: one-time sign-in links or new random passwords, shown once."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction

from vzpanel.audit import log as audit

from .models import Course, LoginLink, Membership


def issue_links(user, course: Course, memberships) -> list[tuple[Membership, str]]:
    """New one-time sign-in links for these students (older unused ones stop working); the keys, once."""
    out = []
    with transaction.atomic():
        for m in course.governed_students().filter(pk__in=[m.pk for m in memberships]).select_related("user"):
            _, key = LoginLink.issue(m.user, course=course, created_by=user)
            out.append((m, key))
        audit.record("class.links", user=user, detail=f"course {course.pk}: {len(out)} sign-in link(s)")
    return out


def _password() -> str:
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))


def issue_passwords(user, course: Course, memberships) -> list[tuple[Membership, str]]:
    """Set new random initial passwords for these students; return them (shown once, never stored)."""
    memberships = list(course.governed_students().filter(pk__in=[m.pk for m in memberships]).select_related("user"))
    plain = [_password() for _ in memberships]
    # PBKDF2 releases the GIL: hash on every core (about a quarter of a second each).
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashed = list(pool.map(make_password, plain))
    User = get_user_model()
    with transaction.atomic():
        for m, h in zip(memberships, hashed, strict=True):
            User.objects.filter(pk=m.user_id).update(password=h)
        audit.record("class.passwords", user=user, detail=f"course {course.pk}: {len(memberships)} password(s)")
    return list(zip(memberships, plain, strict=True))
