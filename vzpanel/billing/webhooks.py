"""Signed webhooks: sign and verify (pure, no Django), and send(event, payload) to the endpoints admins set.

The signature is Stripe's scheme: the header ``Vzpanel-Signature: t=<unix time>,v1=<hex>`` where the hex is
HMAC-SHA256(secret, "<t>.<body>"). Signing the time with the body lets a receiver refuse an old message
replayed later (``verify`` allows ``tolerance`` seconds). Several ``v1=`` entries may be present (a receiver
accepts any that matches: handy while a secret is being replaced).

Reusable: anything that wants to tell the outside world something (billing's VE and task events, alerts)
calls ``send(event, payload)``; the delivery (an RQ job on the panel's queue, retried with back-off, logged
per endpoint) is this module's. Deliveries go wherever an admin points an endpoint: only http and https URLs
are taken, nothing else is checked (an admin could point one at a service inside the panel's network).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

HEADER = "Vzpanel-Signature"
TOLERANCE = 300  # seconds a signature stays good: a replay of an older message is refused
USER_AGENT = "vzpanel-webhooks/1"
TIMEOUT = 10  # seconds a receiver has to answer
MAX_BODY = 256 * 1024  # a payload larger than this is a bug of its sender, not something to post


class SignatureError(ValueError):
    """A webhook signature that is missing, malformed, too old or not made with the secret."""


class WebhookURLError(ValueError):
    """A URL a webhook cannot be delivered to (not http or https, no host)."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _as_bytes(body) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def sign(secret: str, body: bytes | str, timestamp: int | None = None) -> str:
    """Return the signature header value for body: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "t.body">``."""
    if not secret:
        raise SignatureError("A webhook secret is needed to sign.")
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, t, _as_bytes(body))}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """Return (timestamp, [v1 signatures]) of a signature header, or raise SignatureError."""
    t, sigs = None, []
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                raise SignatureError(f"The signature's timestamp {value!r} is not a whole number.") from None
        elif key == "v1":
            sigs.append(value.strip())
    if t is None:
        raise SignatureError("The signature header has no timestamp (t=...).")
    if not sigs:
        raise SignatureError("The signature header has no v1 signature.")
    return t, sigs


def verify(secret: str, body: bytes | str, header: str, *, tolerance: int = TOLERANCE, now: float | None = None) -> int:
    """Check header against body and secret; return its timestamp, or raise SignatureError saying what is wrong.

    Refused: no or malformed header, a timestamp more than ``tolerance`` seconds from now (either way), or no
    v1 signature that matches (compared in constant time).
    """
    t, sigs = parse_header(header)
    now = time.time() if now is None else now
    if tolerance is not None and abs(now - t) > tolerance:
        raise SignatureError(f"The signature is {int(abs(now - t))} s old; at most {tolerance} s are accepted.")
    expected = _digest(secret, t, _as_bytes(body))
    if not any(hmac.compare_digest(expected, s) for s in sigs):
        raise SignatureError("No signature matches the body and the secret.")
    return t


def clean_url(url: str) -> str:
    """Return url if a webhook can be delivered to it (http or https with a host), else raise WebhookURLError."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError(f"A webhook URL starts with http:// or https:// (got {url[:60]!r}).")
    if not parts.hostname:
        raise WebhookURLError("A webhook URL needs a host name.")
    if any(ord(c) < 33 for c in url):
        raise WebhookURLError("A webhook URL has no spaces or control characters.")
    return url


def event_body(event: str, payload: dict, event_id: str, created: int) -> bytes:
    """The JSON document a receiver gets: id, type, created (unix time) and data."""
    return json.dumps({"id": event_id, "type": event, "created": created, "data": payload},
                      sort_keys=True, separators=(",", ":"), default=str).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a hop: the signed body goes only to the URL the admin set."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post(url: str, body: bytes, signature: str, event: str, event_id: str) -> tuple[int | None, str]:
    """POST body to url; return (HTTP status or None, a short note: the answer's start, or why it failed)."""
    request = urllib.request.Request(clean_url(url), data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, HEADER: signature,
        "Vzpanel-Event": event, "Vzpanel-Event-Id": event_id})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return response.status, response.read(500).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(500).decode(errors="replace") if exc.fp else str(exc.reason)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"[:500]


# --- sending (Django from here on) -------------------------------------------------------------------------


def send(event: str, payload: dict, endpoints=None) -> list:
    """Queue event with payload for every active endpoint that wants it (or to the given endpoints); return the
    deliveries (maybe none).

    Deliveries are queued once the caller's transaction commits (so a rolled-back change announces nothing).
    """
    from django.db import transaction

    from .models import WebhookDelivery, WebhookEndpoint

    if endpoints is None:
        endpoints = [e for e in WebhookEndpoint.objects.filter(active=True) if e.wants(event)]
    if not endpoints:
        return []
    event_id = "evt_" + secrets.token_hex(12)
    created = int(time.time())
    body = event_body(event, payload, event_id, created)
    if len(body) > MAX_BODY:
        raise ValueError(f"webhook payload of {event} is {len(body)} bytes (at most {MAX_BODY})")
    deliveries = [WebhookDelivery.objects.create(endpoint=e, event=event, event_id=event_id, body=body.decode())
                  for e in endpoints]
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: [enqueue(pk) for pk in ids])
    return deliveries


def retry_delays() -> list[int]:
    from django.conf import settings

    return list(getattr(settings, "WEBHOOK_RETRY_DELAYS", [10, 60, 300, 1800, 7200]))


def enqueue(delivery_id: int, delay: int = 0) -> None:
    """Put one delivery attempt on the panel's queue (in ``delay`` seconds: needs a worker --with-scheduler)."""
    from datetime import timedelta

    from django.conf import settings

    from vzpanel.tasks.queue import get_queue

    queue = get_queue(settings.VZPANEL_NODE)
    kwargs = {"args": (delivery_id,), "job_timeout": TIMEOUT * 3, "result_ttl": 0, "failure_ttl": 86400,
              "description": f"webhook delivery {delivery_id}"}
    try:
        if delay:
            queue.enqueue_in(timedelta(seconds=delay), "vzpanel.billing.webhooks.deliver", **kwargs)
        else:
            queue.enqueue("vzpanel.billing.webhooks.deliver", **kwargs)
    except Exception:
        log.exception("webhook delivery %s could not be queued", delivery_id)


def deliver(delivery_id: int) -> str:
    """Make one attempt at a delivery (the RQ job); on failure, queue the next one after its back-off.

    Signed at each attempt (a fresh timestamp), so a retry hours later still passes a receiver's tolerance.
    A 2xx answer is delivered; anything else, or no answer, is retried ``len(retry_delays())`` times.
    """
    from datetime import timedelta

    from django.utils import timezone

    from .models import WebhookDelivery

    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return "nothing to do"
    endpoint = delivery.endpoint
    if not endpoint.active:
        delivery.finish(WebhookDelivery.Status.FAILED, None, "The endpoint was switched off.")
        return delivery.status
    body = delivery.body.encode()
    code, note = post(endpoint.url, body, sign(endpoint.secret, body), delivery.event, delivery.event_id)
    delivery.attempts += 1
    delivery.last_attempt_at = timezone.now()
    if code is not None and 200 <= code < 300:
        delivery.finish(WebhookDelivery.Status.DELIVERED, code, note)
        return delivery.status
    delays = retry_delays()
    if delivery.attempts > len(delays):
        delivery.finish(WebhookDelivery.Status.FAILED, code, note)
        return delivery.status
    delay = delays[delivery.attempts - 1]
    delivery.next_attempt_at = timezone.now() + timedelta(seconds=delay)
    delivery.status_code, delivery.response = code, note
    delivery.save()
    enqueue(delivery.pk, delay)
    return "retrying"
