"""Canonical encodings that edge and central must compute byte for byte alike.

Both use the deterministic protobuf encoding (fields in number order, map
entries sorted by key), which every official protobuf runtime offers:

* a session checksum is the hex SHA-256 of the session with ``checksum`` and
  ``tenant_id`` cleared (the tenant is set by the edge from the credential,
  so it is not part of what the agent wrote);
* a batch signature is the HMAC-SHA256 of the whole request with
  ``header.signature`` cleared (so it covers ``batch_id``, ``sequence``,
  ``agent_id``, ``region``, ``sent_time``, ``incarnation_id`` and every item);
* ``verify_batch`` checks a batch's signature (constant time) and the
  freshness of its ``sent_time`` (the replay window).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Protocol

from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.errors import Unauthenticated


class SignedRequest(Protocol):
    """Any batch request: it has a header and serializes deterministically."""

    @property
    def header(self) -> sync_pb2.BatchHeader: ...

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


def session_checksum(session: memory_pb2.Session | sync_pb2.SessionAppend) -> str:
    """Hex SHA-256 of the canonical encoding of a session (or of a session append)."""
    if not session.checksum and not session.tenant_id:
        return hashlib.sha256(session.SerializeToString(deterministic=True)).hexdigest()
    copy = type(session)()
    copy.CopyFrom(session)  # type: ignore[arg-type]  # same type as ``session``
    copy.checksum = ""
    copy.tenant_id = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def batch_digest(request: SignedRequest, key: bytes) -> bytes:
    """HMAC-SHA256 of ``request`` with its signature field empty."""
    signature = request.header.signature
    request.header.signature = b""
    try:
        payload = request.SerializeToString(deterministic=True)
    finally:
        request.header.signature = signature
    return hmac.new(key, payload, hashlib.sha256).digest()


def sign_batch(request: SignedRequest, key: bytes) -> None:
    """Set ``request.header.signature``."""
    request.header.signature = batch_digest(request, key)


def signature_matches(request: SignedRequest, key: bytes) -> bool:
    """Constant-time check of ``request.header.signature``."""
    return hmac.compare_digest(batch_digest(request, key), request.header.signature)


def check_freshness(sent_time: datetime | None, *, now: datetime, window: timedelta, batch_id: str = "") -> None:
    """Refuse a batch whose ``sent_time`` is missing or further than ``window`` from ``now``.

    The signature covers ``sent_time``, so a captured batch cannot be re-dated;
    with this window a replay of it is only possible while it is fresh, and
    central's batch ledger makes such a replay a no-op (same ``batch_id``, same ack).
    The reason ``STALE_BATCH`` matches ``central_svc.batches.check_header``.
    """
    metadata = {"batch_id": batch_id} if batch_id else {}
    if sent_time is None:
        raise Unauthenticated("batch has no sent_time", reason="STALE_BATCH", metadata=metadata)
    if abs(now - sent_time) > window:
        raise Unauthenticated(
            f"batch {batch_id} was sent at {sent_time.isoformat()}, outside the freshness window "
            f"of {int(window.total_seconds())} s",
            reason="STALE_BATCH",
            metadata=metadata,
        )


def verify_batch(request: SignedRequest, key: bytes | None, *, now: datetime, window: timedelta) -> None:
    """Signature (constant-time) then freshness of a signed batch; ``Unauthenticated`` on failure.

    The signature is checked first so that an unsigned or tampered batch is
    reported as such (``BAD_SIGNATURE``) whatever its time; ``key`` None means
    central has no key for the claimed agent (``UNKNOWN_SIGNING_KEY``).
    """
    header = request.header
    metadata = {"batch_id": header.batch_id} if header.batch_id else {}
    if key is None:
        raise Unauthenticated("no signing key is configured for this agent", reason="UNKNOWN_SIGNING_KEY")
    if not header.signature or not signature_matches(request, key):
        raise Unauthenticated("the batch signature does not verify", reason="BAD_SIGNATURE", metadata=metadata)
    sent = header.sent_time.ToDatetime(tzinfo=UTC) if header.HasField("sent_time") else None
    check_freshness(sent, now=now, window=window, batch_id=header.batch_id)
