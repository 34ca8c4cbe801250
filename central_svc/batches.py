"""What every signed batch goes through, whatever its channel: the ledger entry and the ack.

(The checks before it are ``central_svc.admission``.)

A batch is applied at most once. Its ``batch_id`` and a digest of its content
(everything except the signature and ``sent_time``, so a re-signed resend of
the same items counts as the same batch) go into a ledger; the ack is stored
with it so that a resend gets the very same answer. The checkpoint of an edge
incarnation on a channel is the highest sequence below which nothing is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import IntEnum
from typing import Any

from aeterna_shared.errors import AlreadyExists, InvalidArgument

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
class DecisionResult:
    """The verdict on one decision of a replayed batch (``aeterna.sync.v1.DecisionResult``)."""

    decision_id: str
    outcome: int
    """A value of ``aeterna.sync.v1.ReplayOutcome`` (``central_svc.replay.Outcome``)."""
    conflicting_decision_id: str = ""
    conflict_id: str = ""

    def to_json(self) -> list[object]:
        """The ledger's form: ``[decision_id, outcome, conflicting_decision_id, conflict_id]``."""
        return [self.decision_id, self.outcome, self.conflicting_decision_id, self.conflict_id]

    @classmethod
    def from_json(cls, item: list[Any]) -> DecisionResult:
        """Inverse of ``to_json``."""
        return cls(str(item[0]), int(item[1]), str(item[2]), str(item[3]))


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
    results: tuple[DecisionResult, ...] = ()
    """One verdict per decision of a replayed batch, in order (a duplicate repeats them too); () elsewhere."""

    def to_bytes(self) -> bytes:
        """Stable JSON encoding for the ledger.

        The verdicts go under ``extra.results`` as lists, where the ledger has
        always kept them, so that acks stored before and after read alike.
        """
        document = {
            "batch_id": self.batch_id,
            "sequence": self.sequence,
            "status": int(self.status),
            "processed": self.processed,
            "failed": self.failed,
            "failures": [asdict(failure) for failure in self.failures],
            "checkpoint": self.checkpoint,
            "extra": {"results": [result.to_json() for result in self.results]} if self.results else {},
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ack:
        """Inverse of ``to_bytes``."""
        document = json.loads(raw)
        extra = document.get("extra") or {}
        return cls(
            batch_id=document["batch_id"],
            sequence=int(document["sequence"]),
            status=AckStatus(document["status"]),
            processed=int(document["processed"]),
            failed=int(document["failed"]),
            failures=tuple(ItemFailure(**failure) for failure in document["failures"]),
            checkpoint=int(document["checkpoint"]),
            results=tuple(DecisionResult.from_json(item) for item in extra.get("results") or ()),
        )

    def as_duplicate(self, checkpoint: int) -> Ack:
        """The stored ack, answered again for a resend: same counts, status DUPLICATE."""
        return replace(self, status=AckStatus.DUPLICATE, checkpoint=max(checkpoint, self.checkpoint))


def make_ack(
    meta: BatchMeta,
    applied: int,
    failures: Iterable[ItemFailure],
    checkpoint: int = 0,
    results: Iterable[DecisionResult] = (),
) -> Ack:
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
        results=tuple(results),
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
