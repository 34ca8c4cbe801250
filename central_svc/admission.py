"""Admission: the one step every signed batch passes before any of its items is looked at.

``admit`` runs each check once, in this order (the order is what a refused
caller observes, so it is part of the API):

1. the credential's agent may act for ``header.agent_id``   (PERMISSION_DENIED ``AGENT_MISMATCH``);
2. the batch is within its channel's item limit              (INVALID_ARGUMENT ``BATCH_TOO_LARGE``);
3. the signature verifies with the agent's key               (UNAUTHENTICATED ``BAD_SIGNATURE``),
   by ``aeterna_shared.wire.canonical.signature_matches``, the encoding the edge signs with;
4. the header's fields have a stored form: ``sent_time`` in range, ``batch_id``,
   ``sequence``, the ids and the region within limits, ``incarnation_id`` short
                                                              (INVALID_ARGUMENT, a reason per field);
5. ``sent_time`` is within the freshness window              (UNAUTHENTICATED ``STALE_BATCH``).

The signature is checked before freshness so that a tampered batch is reported
as such whatever its time; ``sent_time`` is signed, so a captured batch cannot
be re-dated, and within the window a replay of it is a DUPLICATE in the ledger.
What passes becomes a ``BatchMeta`` carrying the content digest the ledger
compares resends by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from google.protobuf import timestamp_pb2

from aeterna_security.identity import Identity
from aeterna_shared import limits
from aeterna_shared.config.model import SyncConfig
from aeterna_shared.errors import InvalidArgument, Unauthenticated
from aeterna_shared.wire.canonical import SignedRequest, signature_matches
from aeterna_shared.wire.validation import check_timestamp
from central_svc.batches import BatchMeta, Channel, check_incarnation_id

KeyLookup = Callable[[str], bytes | None]
"""The signing key of an agent id, or None when central holds none for it."""

DECISION_BATCH_LIMIT = 100_000
"""Decisions per batch: far above what an edge sends, only a bound on one message's work."""


@dataclass(frozen=True)
class AdmissionRules:
    """What ``admit`` checks a batch against: keys, item limits, the freshness window and the clock."""

    key_for: KeyLookup
    max_items: Mapping[Channel, int]
    freshness: timedelta
    clock: Callable[[], datetime]

    @classmethod
    def from_config(cls, sync: SyncConfig, key_for: KeyLookup, clock: Callable[[], datetime]) -> AdmissionRules:
        """The rules central serves with: item limits per channel from the batch sizes configured."""
        batch = sync.batch.max_size
        return cls(
            key_for=key_for,
            max_items=MappingProxyType(
                {
                    Channel.SESSIONS: batch,
                    Channel.VECTORS: max(batch, sync.episodic_memory.vector_sync.batch_size),
                    Channel.EPISODES: max(batch, sync.memory_layers.episodic.batch_size),
                    Channel.DECISIONS: DECISION_BATCH_LIMIT,
                }
            ),
            freshness=sync.signing.freshness_window,
            clock=clock,
        )


def admit(request: SignedRequest, identity: Identity, channel: Channel, items: int, rules: AdmissionRules) -> BatchMeta:
    """The batch's ``BatchMeta`` once every check passed; the first failing check raises its domain error."""
    header = request.header
    identity.require_agent(header.agent_id)
    limit = rules.max_items[channel]
    if items > limit:
        raise InvalidArgument(
            f"batch has {items} items, the limit is {limit}",
            reason="BATCH_TOO_LARGE",
            metadata={"limit": str(limit)},
        )
    key = rules.key_for(header.agent_id)
    if key is None or not signature_matches(request, key):
        raise Unauthenticated(
            f"batch {header.batch_id} has no valid signature for agent {header.agent_id!r}",
            reason="BAD_SIGNATURE",
            metadata={"batch_id": header.batch_id},
        )
    sent_time = None
    if header.HasField("sent_time"):
        check_timestamp(header.sent_time, "header.sent_time")
        sent_time = header.sent_time.ToDatetime(tzinfo=UTC)
    if not header.batch_id:
        raise InvalidArgument.for_field("header.batch_id", "a batch needs an id (UUID)", reason="MISSING_BATCH_ID")
    if header.sequence < 1:
        raise InvalidArgument.for_field("header.sequence", "sequences start at 1", reason="BAD_SEQUENCE")
    # What goes into the ledger's indexed columns obeys the same limits as the items.
    limits.check_id(header.batch_id, "header.batch_id")
    limits.check_id(header.agent_id, "header.agent_id")
    limits.check_text(header.region, "header.region", max_bytes=limits.MAX_NAME_BYTES)
    check_incarnation_id(header.incarnation_id, "header.incarnation_id")
    _check_fresh(header.batch_id, sent_time, now=rules.clock(), window=rules.freshness)
    return BatchMeta(
        batch_id=header.batch_id,
        sequence=header.sequence,
        floor_sequence=header.floor_sequence,
        incarnation_id=header.incarnation_id,
        agent_id=header.agent_id,
        region=header.region,
        sent_time=sent_time,
        channel=channel,
        digest=content_digest(request),
    )


def _check_fresh(batch_id: str, sent_time: datetime | None, *, now: datetime, window: timedelta) -> None:
    if sent_time is None:
        raise Unauthenticated("batch has no sent_time", reason="STALE_BATCH", metadata={"batch_id": batch_id})
    if abs(now - sent_time) > window:
        raise Unauthenticated(
            f"batch {batch_id} was sent at {sent_time.isoformat()}, outside the freshness window "
            f"of {int(window.total_seconds())} s; re-sign it with the current time",
            reason="STALE_BATCH",
            metadata={"batch_id": batch_id},
        )


def content_digest(request: SignedRequest) -> bytes:
    """SHA-256 of the batch without what a resend may change: signature, sent_time, floor_sequence.

    A re-signed resend of the same batch has the same digest, so it is a
    DUPLICATE rather than a reuse of the batch id with other content.
    """
    header = request.header
    signature, floor = header.signature, header.floor_sequence
    sent = timestamp_pb2.Timestamp()
    had_time = header.HasField("sent_time")
    sent.CopyFrom(header.sent_time)
    header.signature = b""
    header.floor_sequence = 0
    header.ClearField("sent_time")
    try:
        payload = request.SerializeToString(deterministic=True)
    finally:
        header.signature = signature
        header.floor_sequence = floor
        if had_time:
            header.sent_time.CopyFrom(sent)
    return hashlib.sha256(payload).digest()
