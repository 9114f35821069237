"""Webhook signatures (vzpanel/billing/webhooks.py): Stripe's scheme, checked by hand and against tampering.

Pure: no Django, no database (importing the module must not need either)."""

import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import pytest

from vzpanel.billing.webhooks import (
    SignatureError,
    WebhookURLError,
    clean_url,
    event_body,
    new_secret,
    parse_header,
    sign,
    verify,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_test-secret"
BODY = b'{"id":"evt_1","type":"ve.created"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    header = sign(SECRET, BODY, timestamp=1700000000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_a_fresh_signature_verifies_and_gives_its_timestamp():
    header = sign(SECRET, BODY, timestamp=1700000000)
    assert verify(SECRET, BODY, header, now=1700000010) == 1700000000
    assert verify(SECRET, BODY.decode(), header, now=1700000010) == 1700000000  # str and bytes alike


@pytest.mark.parametrize("body, secret", [(BODY + b" ", SECRET), (BODY.replace(b"created", b"destroyed"), SECRET),
                                          (BODY, "whsec_another")])
def test_a_changed_body_or_another_secret_is_refused(body, secret):
    header = sign(SECRET, BODY, timestamp=1700000000)
    with pytest.raises(SignatureError, match="No signature matches"):
        verify(secret, body, header, now=1700000000)


def test_an_old_or_future_timestamp_is_refused_even_with_a_good_signature():
    header = sign(SECRET, BODY, timestamp=1700000000)
    with pytest.raises(SignatureError, match="301 s old; at most 300"):
        verify(SECRET, BODY, header, now=1700000301)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=1700000000 - 301)
    assert verify(SECRET, BODY, header, now=1700000301, tolerance=None) == 1700000000


def test_a_timestamp_moved_forward_breaks_the_signature():
    """A replayed message with a new t= (to pass the tolerance) no longer matches: t is signed too."""
    header = sign(SECRET, BODY, timestamp=1700000000)
    forged = header.replace("t=1700000000", "t=1700000500")
    with pytest.raises(SignatureError, match="No signature matches"):
        verify(SECRET, BODY, forged, now=1700000500)


def test_any_matching_v1_is_enough_while_a_secret_is_replaced():
    good = sign(SECRET, BODY, timestamp=1700000000).split("v1=")[1]
    header = f"t=1700000000,v1={'0' * 64},v1={good}"
    assert verify(SECRET, BODY, header, now=1700000000) == 1700000000


@pytest.mark.parametrize("header, why", [
    ("", "no timestamp"), ("v1=abc", "no timestamp"), ("t=1700000000", "no v1"), ("t=soon,v1=ab", "not a whole"),
])
def test_malformed_headers_are_refused_in_words(header, why):
    with pytest.raises(SignatureError, match=why):
        verify(SECRET, BODY, header, now=1700000000)


def test_parse_header_ignores_other_schemes():
    assert parse_header("t=5,v0=old,v1=aa,x") == (5, ["aa"])


def test_signing_needs_a_secret_and_secrets_are_long_and_distinct():
    with pytest.raises(SignatureError):
        sign("", BODY)
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(a) > 40


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.test/x", "gopher://h/", "javascript:alert(1)",
                                 "http://", "https:///path", "http://exa mple.test/"])
def test_only_http_and_https_urls_are_taken(url):
    with pytest.raises(WebhookURLError):
        clean_url(url)


def test_http_and_https_urls_pass():
    assert clean_url(" https://billing.example.test/hook?x=1 ") == "https://billing.example.test/hook?x=1"
    assert clean_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/"


def test_the_event_body_is_stable_json():
    body = event_body("ve.locked", {"ve": {"ctid": 101}, "reason": "x"}, "evt_1", 5)
    assert body == b'{"created":5,"data":{"reason":"x","ve":{"ctid":101}},"id":"evt_1","type":"ve.locked"}'


def test_the_signing_module_loads_without_django():
    code = ("import sys, vzpanel.billing.webhooks as w; w.verify('s', b'x', w.sign('s', b'x')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
