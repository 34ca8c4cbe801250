"""Canonical encodings that edge and central must compute byte for byte alike.

Both use the deterministic protobuf encoding (fields in number order, map
entries sorted by key), which every official protobuf runtime offers:

* a session checksum is the hex SHA-256 of the session with ``checksum`` and
  ``tenant_id`` cleared (the tenant is set by the edge from the credential,
  so it is not part of what the agent wrote);
* a batch signature is the HMAC-SHA256 of the whole request with
  ``header.signature`` cleared (so it covers ``batch_id``, ``sequence``,
  ``agent_id``, ``region``, ``sent_time``, ``incarnation_id`` and every item);
  the edge signs with ``sign_batch``, central verifies with
  ``signature_matches`` (constant time) as one step of its admission
  (``central_svc.admission``, which also checks the freshness of ``sent_time``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2


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
