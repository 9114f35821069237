"""The wire format between the panel and a node agent: JSON in Redis lists, nothing else.

A request is one JSON object pushed onto the node's request list::

    {"v": 1, "id": "<32 hex>", "op": "start", "params": {...}, "sender": "worker pid 123"}

The agent answers on the request's own reply list with a sequence of events, the last of which ends it::

    {"t": "progress", "p": 40, "m": "starting VE 101"}
    {"t": "result", "value": ...}            or
    {"t": "error", "kind": "NotFound", "message": "VE 101 does not exist"}
    {"t": "bug", "message": "...", "ref": "A1B2C3D4"}

Every key of a node lives under ``vz:agent:<node>:``, so a node's Redis credentials can be limited to its own
keys (an ACL key pattern), and nothing here can carry code: a request that is not well-formed JSON of this
shape is refused before anything looks at its operation.
"""

from __future__ import annotations

import json
import re
import secrets

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
REPLY_TTL = 3600  # seconds a reply list outlives its last event (a client that gave up)
ALIVE_TTL = 15  # the agent refreshes its alive key every ALIVE_TTL / 3 seconds
NODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ID_RE = re.compile(r"^[0-9a-f]{32}$")
OP_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class BadRequest(ValueError):
    """The request is not a well-formed agent request."""


def check_node(node: str) -> str:
    if not isinstance(node, str) or not NODE_RE.match(node):
        raise ValueError(f"invalid node name {node!r}: use 1-63 lowercase letters, digits and '-'")
    return node


def prefix(node: str) -> str:
    return f"vz:agent:{check_node(node)}:"


def requests_key(node: str) -> str:
    return prefix(node) + "requests"


def reply_key(node: str, request_id: str) -> str:
    return prefix(node) + "reply:" + request_id


def alive_key(node: str) -> str:
    return prefix(node) + "alive"


def refused_key(node: str) -> str:
    """Where the agent records the requests it refused, for the panel's audit log."""
    return prefix(node) + "refused"


def new_id() -> str:
    return secrets.token_hex(16)


def encode_request(op: str, params: dict, sender: str = "", request_id: str | None = None) -> tuple[str, bytes]:
    request_id = request_id or new_id()
    body = json.dumps({"v": VERSION, "id": request_id, "op": op, "params": params, "sender": sender[:200]},
                      separators=(",", ":")).encode()
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request {op} is {len(body)} bytes, more than the {MAX_REQUEST_BYTES} allowed")
    return request_id, body


def decode_request(raw: bytes) -> dict:
    """Parse a request; raise BadRequest (with what is wrong) for anything not of the documented shape."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request of {len(raw)} bytes is larger than {MAX_REQUEST_BYTES}")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BadRequest("not a JSON object")
    if msg.get("v") != VERSION:
        raise BadRequest(f"protocol version {msg.get('v')!r}, expected {VERSION}")
    if not isinstance(msg.get("id"), str) or not ID_RE.match(msg["id"]):
        raise BadRequest("missing or malformed request id")
    if not isinstance(msg.get("op"), str) or not OP_RE.match(msg["op"]):
        raise BadRequest(f"malformed operation name {str(msg.get('op'))[:60]!r}")
    if not isinstance(msg.get("params"), dict):
        raise BadRequest("params must be a JSON object")
    sender = msg.get("sender", "")
    msg["sender"] = sender[:200] if isinstance(sender, str) else ""
    return msg


def event(t: str, /, **fields) -> bytes:
    return json.dumps({"t": t, **fields}, separators=(",", ":"), default=str).encode()
