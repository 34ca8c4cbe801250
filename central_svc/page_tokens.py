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
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from aeterna_shared.errors import InvalidArgument

_MAC_BYTES = 16

_T = TypeVar("_T")

Position = list[Any]
"""Where a page ends: the sort key of its last row, as JSON values."""


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


async def paginate(
    key: bytes,
    *,
    page_size_requested: int,
    page_token: str,
    query: Sequence[object],
    fetch: Callable[[Position | None, int], Awaitable[Sequence[_T]]],
    position_of: Callable[[_T], Position],
) -> tuple[list[_T], str]:
    """One AIP-158 page of a listing and the token for the next ('' on the last page).

    ``query`` names the listing and its filter (the token is bound to it);
    ``fetch(after, limit)`` returns up to ``limit`` rows after the decoded
    position (None: from the start); ``position_of`` is the sort key of a row.
    One row more than the page is fetched to know whether another page follows.
    """
    size = page_size(page_size_requested)
    filter_fingerprint = fingerprint(*query)
    after = decode(key, filter_fingerprint, page_token) if page_token else None
    rows = list(await fetch(after, size + 1))
    if len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    return rows, encode(key, filter_fingerprint, position_of(rows[-1]))


def time_position(position: Position | None) -> tuple[datetime, str] | None:
    """A ``[iso time, id]`` position (listings ordered by a time, then an id) as a typed key."""
    if position is None:
        return None
    return datetime.fromisoformat(position[0]), str(position[1])
