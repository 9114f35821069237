"""Two-factor sign-in (django-otp): TOTP authenticator apps plus one-time recovery codes.

After the password, a user with a confirmed authenticator is not signed in yet: the session only holds a
pending sign-in (who, through which backend, where to go next) until a code from the app or a recovery
code checks out. A user whose role must use two factors (VZPANEL_2FA_REQUIRED_ROLES) and has no device
yet gets the same pending sign-in, which only allows enrolling. API tokens are not affected.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import segno
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY, devices_for_user, verify_token
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

PENDING_KEY = "vzpanel_signin"
PENDING_SECONDS = 300  # time to type the code after the password
RECOVERY_CODES = 10
APP_NAME = "authenticator app"
RECOVERY_NAME = "recovery codes"


def required_roles() -> set[str]:
    return set(getattr(settings, "VZPANEL_2FA_REQUIRED_ROLES", ()))


def is_required(user) -> bool:
    """Return whether user's role must sign in with two factors."""
    roles = required_roles()
    return user.role in roles or ("admin" in roles and user.is_panel_admin)


def totp_device(user, confirmed: bool | None = True) -> TOTPDevice | None:
    devices = TOTPDevice.objects.filter(user=user)
    if confirmed is not None:
        devices = devices.filter(confirmed=confirmed)
    return devices.order_by("-id").first()


def has_device(user) -> bool:
    """Return whether user has a confirmed authenticator (recovery codes alone do not count)."""
    return user.pk is not None and TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def recovery_left(user) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


# --- the pending sign-in -----------------------------------------------------------------------------


@dataclass
class Pending:
    user: object
    backend: str
    next_url: str
    enrol: bool


def start_pending(request, user, backend: str, next_url: str) -> Pending:
    """Remember that user passed the password step; the session is not signed in."""
    request.session.cycle_key()  # a fixated session id must not carry the pending sign-in
    request.session[PENDING_KEY] = {"uid": user.pk, "backend": backend, "next": next_url, "at": time.time(),
                                    "enrol": not has_device(user)}
    return pending(request)


def pending(request) -> Pending | None:
    """Return the session's pending sign-in, or None if there is none or it expired."""
    data = request.session.get(PENDING_KEY)
    if not isinstance(data, dict):
        return None
    # Enrolment takes longer than typing a code: scanning and confirming gets 15 minutes.
    limit = PENDING_SECONDS * (3 if data.get("enrol") else 1)
    if time.time() - float(data.get("at", 0)) > limit:
        clear_pending(request)
        return None
    user = get_user_model().objects.filter(pk=data.get("uid"), is_active=True).first()
    if user is None:
        clear_pending(request)
        return None
    return Pending(user, data["backend"], data.get("next") or settings.LOGIN_REDIRECT_URL, bool(data.get("enrol")))


def clear_pending(request) -> None:
    request.session.pop(PENDING_KEY, None)


def session_verified(request) -> bool:
    """Return whether the signed-in session passed a second factor (django-otp's device in the session)."""
    return bool(request.session.get(DEVICE_ID_SESSION_KEY))


# --- codes -------------------------------------------------------------------------------------------


def normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def verify(user, code: str) -> tuple[object | None, str]:
    """Return (device, kind) if code is a current TOTP code or an unused recovery code of user."""
    code = normalise(code)
    if code.isdigit():
        candidates, kind = TOTPDevice.objects.filter(user=user, confirmed=True), "authenticator app"
    else:
        candidates, kind = StaticDevice.objects.filter(user=user, confirmed=True), "recovery code"
    for device in candidates:
        matched = verify_token(user, device.persistent_id, code)  # locks the row, throttles failures
        if matched is not None:
            return matched, kind
    return None, kind


def throttled_seconds(user) -> int:
    """Return how long django-otp's own throttle still refuses codes for user (0: not throttled)."""
    waits = []
    for device in devices_for_user(user):
        allowed, info = device.verify_is_allowed()
        if not allowed and info and info.get("locked_until"):
            waits.append((info["locked_until"] - timezone.now()).total_seconds())
    return int(max(waits)) + 1 if waits else 0


# --- enrolment ---------------------------------------------------------------------------------------


def unconfirmed_device(user) -> TOTPDevice:
    """Return user's authenticator being set up (the same one until it is confirmed or abandoned)."""
    device = totp_device(user, confirmed=False)
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=APP_NAME, confirmed=False)
    return device


def secret_of(device: TOTPDevice) -> str:
    """Return the device's key in base32, as authenticator apps take it, in groups of four."""
    raw = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def qr_svg(device: TOTPDevice) -> str:
    """Return an inline SVG QR code of the device's otpauth:// URL."""
    return segno.make(device.config_url, error="m").svg_inline(scale=4, dark="#000", light="#fff")


def confirm(user, device: TOTPDevice, code: str) -> list[str] | None:
    """Confirm device with a code from the app; return fresh recovery codes, or None if the code is wrong."""
    code = normalise(code)
    if not code.isdigit() or not device.verify_token(code):
        return None
    with transaction.atomic():
        # One authenticator per user: a new one replaces the old.
        TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        return new_recovery_codes(user)


def new_recovery_codes(user) -> list[str]:
    """Replace user's recovery codes with RECOVERY_CODES new ones; return them (shown once)."""
    with transaction.atomic():
        StaticDevice.objects.filter(user=user).delete()
        device = StaticDevice.objects.create(user=user, name=RECOVERY_NAME, confirmed=True)
        codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
        StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
    return [f"{c[:4]}-{c[4:]}" for c in codes]


def remove(user) -> None:
    """Remove user's authenticator and recovery codes."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()
