"""What every signed batch goes through, whatever its channel: checks, the ledger entry, the ack.

A batch is applied at most once. Its ``batch_id`` and a digest of its content
(everything except the signature and ``sent_time``, so a re-signed resend of
the same items counts as the same batch) go into a ledger; the ack is stored
with it so that a resend gets the very same answer. The checkpoint of an edge
incarnation on a channel is the highest sequence below which nothing is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum

from aeterna_security.identity import Identity
from aeterna_shared import limits
from aeterna_shared.errors import AlreadyExists, InvalidArgument, Unauthenticated

MAX_INCARNATION_ID = 64
"""Longest ``incarnation_id`` accepted (the edge sends a 36-character UUID)."""


class Channel(IntEnum):
    """The sync channels; values equal ``aeterna.sync.v1.SyncChannel``."""

    SESSIONS = 1
    VECTORS = 2
    DECISIONS = 3
    EPISODES = 4


class AckStatus(IntEnum):
    """Batch outcome; values equal ``aeterna.sync.v1.AckStatus``."""

    ACCEPTED = 1
    PARTIAL = 2
    DUPLICATE = 3


@dataclass(frozen=True)
class BatchMeta:
    """The header of a batch, after translation from protobuf."""

    batch_id: str
    sequence: int
    agent_id: str
    region: str
    sent_time: datetime | None
    channel: Channel
    digest: bytes
    """SHA-256 of the batch content without signature, sent_time and floor_sequence."""
    floor_sequence: int = 0
    """Lowest sequence the edge still holds; lower ones it never sent were dead-lettered (0: unknown)."""
    incarnation_id: str = ""
    """Identity of the edge's local state; sequences and checkpoints count within it ('': none)."""


@dataclass(frozen=True)
class ItemFailure:
    """One item that was not applied, and why."""

    item_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class Ack:
    """Central's answer to a batch (translated to ``BatchAck`` by the API layer)."""

    batch_id: str
    sequence: int
    status: AckStatus
    processed: int
    failed: int
    failures: tuple[ItemFailure, ...] = ()
    checkpoint: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    """Channel-specific results that a duplicate must repeat too (decision outcomes)."""

    def to_bytes(self) -> bytes:
        """Stable JSON encoding for the ledger."""
        document = asdict(self)
        document["status"] = int(self.status)
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ack:
        """Inverse of ``to_bytes``."""
        document = json.loads(raw)
        return cls(
            batch_id=document["batch_id"],
            sequence=int(document["sequence"]),
            status=AckStatus(document["status"]),
            processed=int(document["processed"]),
            failed=int(document["failed"]),
            failures=tuple(ItemFailure(**failure) for failure in document["failures"]),
            checkpoint=int(document["checkpoint"]),
            extra=dict(document.get("extra") or {}),
        )

    def as_duplicate(self, checkpoint: int) -> Ack:
        """The stored ack, answered again for a resend: same counts, status DUPLICATE."""
        return replace(self, status=AckStatus.DUPLICATE, checkpoint=max(checkpoint, self.checkpoint))


def make_ack(meta: BatchMeta, applied: int, failures: Iterable[ItemFailure], checkpoint: int = 0) -> Ack:
    """An ack for a freshly applied batch."""
    failed = tuple(failures)
    return Ack(
        batch_id=meta.batch_id,
        sequence=meta.sequence,
        status=AckStatus.PARTIAL if failed else AckStatus.ACCEPTED,
        processed=applied,
        failed=len(failed),
        failures=failed,
        checkpoint=checkpoint,
    )


def check_header(meta: BatchMeta, identity: Identity, *, now: datetime, freshness: timedelta) -> None:
    """Identity, shape and freshness of a batch header; raises the domain error that ends the stream."""
    identity.require_agent(meta.agent_id)
    if not meta.batch_id:
        raise InvalidArgument.for_field("header.batch_id", "a batch needs an id (UUID)", reason="MISSING_BATCH_ID")
    if meta.sequence < 1:
        raise InvalidArgument.for_field("header.sequence", "sequences start at 1", reason="BAD_SEQUENCE")
    # What goes into the ledger's indexed columns obeys the same limits as the items.
    limits.check_id(meta.batch_id, "header.batch_id")
    limits.check_id(meta.agent_id, "header.agent_id")
    limits.check_text(meta.region, "header.region", max_bytes=limits.MAX_NAME_BYTES)
    check_incarnation_id(meta.incarnation_id, "header.incarnation_id")
    if meta.sent_time is None:
        raise Unauthenticated("batch has no sent_time", reason="STALE_BATCH", metadata={"batch_id": meta.batch_id})
    skew = abs(now - meta.sent_time)
    if skew > freshness:
        raise Unauthenticated(
            f"batch {meta.batch_id} was sent at {meta.sent_time.isoformat()}, outside the freshness window "
            f"of {int(freshness.total_seconds())} s; re-sign it with the current time",
            reason="STALE_BATCH",
            metadata={"batch_id": meta.batch_id},
        )


def check_incarnation_id(incarnation_id: str, field: str) -> None:
    """An incarnation id is empty or a short id (the edge sends a UUID)."""
    if len(incarnation_id) > MAX_INCARNATION_ID:
        raise InvalidArgument.for_field(
            field,
            f"an incarnation id (a UUID) has at most {MAX_INCARNATION_ID} characters",
            reason="BAD_INCARNATION_ID",
        )


def reused_batch_id(meta: BatchMeta) -> AlreadyExists:
    """The error for a batch id that arrives again with other content."""
    return AlreadyExists(
        f"batch id {meta.batch_id} was already used for a batch with other content",
        reason="BATCH_ID_REUSED",
        metadata={"batch_id": meta.batch_id},
    )


def advance_checkpoint(
    contiguous: int, applied_above: Iterable[int], sequence: int, floor: int = 0
) -> tuple[int, list[int]]:
    """Record ``sequence`` as applied; return the new contiguous checkpoint and what stays above it.

    ``floor`` is the lowest sequence the edge still holds: nothing below it can
    arrive any more (applied, or dead-lettered at the edge), so the checkpoint
    moves up to it even across a gap.

    >>> advance_checkpoint(2, [4, 5], 3)
    (5, [])
    >>> advance_checkpoint(2, [], 4)
    (2, [4])
    >>> advance_checkpoint(2, [6], 7, floor=6)
    (7, [])
    """
    contiguous = max(contiguous, floor - 1)
    pending = {s for s in applied_above if s > contiguous}
    if sequence > contiguous:
        pending.add(sequence)
    while contiguous + 1 in pending:
        contiguous += 1
        pending.discard(contiguous)
    return contiguous, sorted(pending)
