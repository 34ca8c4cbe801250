"""AIP-158 page tokens: opaque to clients, tamper-evident, bound to the request's filter.

A token is ``base64url(json(position) + HMAC-SHA256(key, fingerprint + json))``.
The fingerprint covers the listing's filter, so a token from one query cannot
be replayed against another; every replica shares the key (it lives in the
database), so a client may continue on any of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from aeterna_shared.errors import InvalidArgument

_MAC_BYTES = 16


def fingerprint(*parts: object) -> str:
    """A stable digest of a listing's filter fields."""
    return hashlib.sha256(json.dumps(parts, default=str, separators=(",", ":")).encode()).hexdigest()[:32]


def encode(key: bytes, filter_fingerprint: str, position: list[Any]) -> str:
    """The token for the page that starts after ``position``."""
    body = json.dumps(position, separators=(",", ":")).encode()
    mac = hmac.new(key, filter_fingerprint.encode() + body, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def decode(key: bytes, filter_fingerprint: str, token: str) -> list[Any]:
    """The position a token encodes; INVALID_ARGUMENT when it was altered or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.new(key, filter_fingerprint.encode() + body, hashlib.sha256).digest()[:_MAC_BYTES]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, expected):
        raise InvalidArgument.for_field(
            "page_token", "not a token from a previous response to this same request", reason="INVALID_PAGE_TOKEN"
        )
    position = json.loads(body)
    if not isinstance(position, list):
        raise InvalidArgument.for_field("page_token", "malformed token", reason="INVALID_PAGE_TOKEN")
    return position


def page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    """AIP-158 page size: 0 means the default, larger than the maximum is clamped, negative is an error."""
    if requested < 0:
        raise InvalidArgument.for_field("page_size", "must not be negative", reason="BAD_PAGE_SIZE")
    return default if requested == 0 else min(requested, maximum)
