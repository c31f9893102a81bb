"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign and verify.

Pure functions on bytes: no I/O, no clock unless the caller lets `verify` read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class InvalidSignature(ValueError):
    """The webhook's signature headers are missing, stale or do not match the body."""


def _key(secret: str) -> bytes:
    """The HMAC key: the secret's base64 payload, after its `whsec_` prefix."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not base64 after its 'whsec_' prefix") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three signature headers for one delivery attempt, signed with every secret in
    `secrets` (space-separated: during a rotation, receivers with either secret verify)."""
    if not secrets:
        raise ValueError("a webhook needs at least one secret to be signed")
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def _header(received: Mapping[str, str], name: str) -> str:
    # HTTP header names are case-insensitive; a plain dict from a test or a framework that
    # keeps the sender's spelling must still match.
    value = received.get(name)
    if value is None:
        value = next((v for k, v in received.items() if k.lower() == name), None)
    if not value:
        raise InvalidSignature(f"missing {name} header")
    return value


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: int | None = None,
) -> None:
    """Raise `InvalidSignature` unless one `v1` signature in `headers` matches `body`.

    The timestamp must lie within `tolerance_seconds` of `now` (default: the clock) on either
    side, which bounds how long a captured request can be replayed.
    """
    msg_id = _header(headers, HEADER_ID)
    raw_timestamp = _header(headers, HEADER_TIMESTAMP)
    signatures = _header(headers, HEADER_SIGNATURE)

    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise InvalidSignature(f"{HEADER_TIMESTAMP} is not an integer") from None
    current = int(time.time()) if now is None else now
    if timestamp < current - tolerance_seconds:
        raise InvalidSignature("message timestamp too old")
    if timestamp > current + tolerance_seconds:
        raise InvalidSignature("message timestamp too new")

    expected = sign(secret, msg_id, timestamp, body).encode()
    # Several space-separated signatures are allowed so a sender can rotate secrets; entries
    # of other versions (e.g. asymmetric `v1a`) are skipped, not errors.
    for candidate in signatures.split():
        version, _, _ = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(candidate.encode(), expected):
            return
    raise InvalidSignature("no matching signature")
