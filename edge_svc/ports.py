"""The ports the edge's domain logic talks to. Adapters live in ``store/`` and ``api/``.

Keeping the heavy dependencies (redis, sqlite, qdrant, grpc) behind these
protocols lets the domain modules stay plain Python that reads top to bottom.
No port names a driver type, and no adapter lets a driver's exception out:
a store that cannot answer raises the project's own ``Unavailable`` or
``ResourceExhausted`` (``aeterna_shared.errors``), mapped at the adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_svc.records import (
    Ack,
    Channel,
    Checkpoints,
    JsonDict,
    OutboxBatch,
    PolicyBundleRecord,
    ScoredRecord,
    SessionRecord,
    VectorRecord,
)

Mutation = Callable[[bytes | None, dict[str, str]], tuple[bytes, dict[str, str]]]
"""A pure update of one session: (current value or None, pending-change hash) -> (new value, new hash)."""


class Cache(Protocol):
    """The Redis-protocol store holding working memory, or session memory (each has its own instance)."""

    async def ping(self) -> bool:
        """True when the store answers (readiness asks this); ``Unavailable`` when it cannot be reached."""
        ...

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` milliseconds."""
        ...

    async def set_if_absent(self, key: str, value: bytes, ttl_ms: int) -> bool:
        """Store ``value`` only when ``key`` holds nothing; True when stored."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""
        ...

    async def update(self, key: str, pending_key: str, dirty_hash: str, field: str, mutate: Mutation) -> bytes:
        """Apply ``mutate`` to ``key`` and ``pending_key`` and bump ``field`` in ``dirty_hash``, atomically
        against every other writer; the value keeps no TTL. Returns the new value."""
        ...

    async def dirty_versions(self, dirty_hash: str, limit: int) -> dict[str, int]:
        """Up to ``limit`` dirty fields with their versions."""
        ...

    async def dirty_count(self, dirty_hash: str) -> int:
        """Number of dirty fields."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order."""
        ...

    async def hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """The hash held at each key (empty when missing), in order."""
        ...

    async def clear_dirty(self, dirty_hash: str, entries: Sequence[tuple[str, int, str]]) -> int:
        """For each (field, version, pending_key) whose version is unchanged: clear the mark and drop the
        pending hash. Returns how many were cleared."""
        ...

    async def release(self, dirty_hash: str, entries: Sequence[tuple[str, str, bool]], ttl_ms: int) -> int:
        """For each (field, key, drop) whose field is not dirty again: give ``key`` its TTL, or delete it
        when ``drop``. Returns how many were released."""
        ...

    async def count_keys(self, pattern: str) -> int:
        """Number of keys matching ``pattern`` (SCAN, not KEYS)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


Refusals = Mapping[int, Sequence[tuple[str, str, str]]]
"""Per acknowledged batch sequence, central's failures of its items: (item id, reason, message)."""

REFUSED_PREFIX = "refused:"
"""Dead-letter causes of refusals by central are ``refused:<central's reason>``."""


@dataclass(frozen=True)
class RefusedItem:
    """An item of an acknowledged batch that central refused; it is now in the dead letters."""

    sequence: int
    batch_id: str
    item_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class DeadLetter(OutboxBatch):
    """One row of the dead-letter store: a batch (or the items of one that central refused) out of the queue."""

    reason: str
    """Why it left the queue: ``expired``, ``overflow``, ``refused:<REASON>``, ..."""
    detail: str
    """Central's message, for what central refused."""


@dataclass(frozen=True)
class ChannelStats:
    """What ``GetEdgeStatus`` reports for one channel."""

    channel: Channel
    pending_items: int
    pending_batches: int
    dead_letters: int
    acked_sequence: int
    last_sync: float | None


class Outbox(Protocol):
    """The durable, per-channel ordered queue of batches bound for central (SQLite in ``store/outbox.py``).

    Every method is synchronous and may block on an fsync: async callers run
    it with ``asyncio.to_thread`` (all but ``journal``, which neither
    fsyncs nor waits). A store that cannot be read or written
    raises ``Unavailable`` (reason ``OUTBOX_UNAVAILABLE``) and changed nothing.
    """

    @property
    def incarnation_id(self) -> str:
        """Identity of this outbox's database (``BatchHeader.incarnation_id``); empty for a pre-incarnation one."""
        ...

    def enqueue(self, channel: Channel, items: Sequence[JsonDict]) -> OutboxBatch:
        """Commit one batch of ``items``; returns it with its sequence and batch id."""
        ...

    def journal(self, channel: Channel, item: str) -> bool:
        """Commit one item (compact JSON) to the journal, durable against a crash of this process but not yet
        a power loss; never waits (the one method called on the event loop): False, nothing done, when busy."""
        ...

    def journal_many(self, channel: Channel, items: Sequence[str]) -> None:
        """``journal`` for several items, waiting for the store."""
        ...

    def move_journal(self, channel: Channel, max_items: int, max_bytes: int) -> int:
        """Turn journaled items into batches, exactly once; returns how many moved."""
        ...

    def sync(self) -> bool:
        """Make the journal survive a power loss; returns whether there was anything to do."""
        ...

    def pending(self, channel: Channel, limit: int) -> list[OutboxBatch]:
        """The oldest ``limit`` batches of ``channel``, in sequence order."""
        ...

    def held(self, channel: Channel, limit: int) -> list[tuple[int, str]]:
        """(sequence, batch id) of the oldest ``limit`` batches of ``channel``, in sequence order."""
        ...

    def contains(self, channel: Channel, sequence: int) -> bool:
        """True while the batch is still queued."""
        ...

    def ack(self, channel: Channel, sequences: Sequence[int], checkpoint: int = 0) -> int:
        """Remove acknowledged batches (and any at or below ``checkpoint``); returns items removed."""
        ...

    def ack_refusing(
        self, channel: Channel, sequences: Sequence[int], checkpoint: int = 0, refused: Refusals | None = None
    ) -> tuple[int, list[RefusedItem]]:
        """``ack``, moving the items central refused to the dead letters in the same transaction;
        returns (items removed, items moved)."""
        ...

    def discard(self, channel: Channel, sequence: int, reason: str, detail: str = "") -> int:
        """Move one batch to the dead letters (a batch central refused); returns the items moved."""
        ...

    def bury(self, channel: Channel, items: Sequence[JsonDict], reason: str) -> int:
        """Put items that never made it into a batch straight into the dead letters; returns how many."""
        ...

    def expire(self) -> int:
        """Move batches older than their channel's TTL to the dead letters; returns items moved."""
        ...

    def stats(self) -> list[ChannelStats]:
        """Depth, dead letters and last sync of every channel."""
        ...

    def dead_letter_counts(self) -> list[tuple[Channel, str, int]]:
        """(channel, cause, items) over the whole dead-letter store."""
        ...

    def dead_letter_rows(self, channel: Channel, batch_id: str | None = None) -> list[DeadLetter]:
        """The channel's dead letters (of one batch, when given) with their items and central's message."""
        ...

    def close(self) -> None:
        """Close the store (everything committed is already durable)."""
        ...


class VectorStore(Protocol):
    """The on-disk vector subset (Qdrant Edge)."""

    def upsert(self, records: Sequence[VectorRecord], *, cached: bool) -> None:
        """Insert or replace vectors; ``cached`` marks copies fetched from central."""
        ...

    def search(self, embedding: Sequence[float], limit: int) -> list[ScoredRecord]:
        """Nearest neighbours by cosine similarity, best first."""
        ...

    def delete(self, vector_ids: Sequence[str]) -> None:
        """Remove vectors by id."""
        ...

    def count(self) -> int:
        """Number of vectors held."""
        ...

    def optimize(self) -> None:
        """Build indexes (HNSW) after bulk loads."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


class Central(Protocol):
    """Everything the edge asks of central. Implemented over gRPC in ``api/central_client.py``."""

    async def check_health(self, deadline_seconds: float) -> bool:
        """True when central's health service answers SERVING within ``deadline_seconds``."""
        ...

    async def checkpoints(self, held: Mapping[Channel, Sequence[str]]) -> Checkpoints:
        """Central's highest contiguous applied sequence per channel for this edge, and the stored acks
        of those ``held`` batches (ids of batches still queued, per channel) that central applied."""
        ...

    async def send(self, channel: Channel, batches: Sequence[OutboxBatch]) -> list[Ack]:
        """Send batches in order (pipelined where the channel streams); returns the acks received.

        Fewer acks than batches means the exchange broke after the last ack;
        the error that ended it is raised only when no ack arrived at all.
        """
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """Central's copy of a session, or None."""
        ...

    async def search_vectors(
        self, embedding: Sequence[float], limit: int, score_threshold: float, exclude_ids: Sequence[str]
    ) -> list[ScoredRecord]:
        """Hits from central's complete graph, excluding this region and ``exclude_ids``."""
        ...

    def watch_policies(self, known_version: int) -> AsyncIterator[PolicyBundleRecord]:
        """Bundles newer than ``known_version`` as central publishes them."""
        ...

    async def announce_offline(self, reason: str) -> None:
        """Tell central this edge goes offline on purpose."""
        ...

    async def close(self) -> None:
        """Close the channel."""
        ...
