"""The ports the edge's domain logic talks to. Adapters live in ``store/`` and ``api/``.

Keeping the heavy dependencies (redis, sqlite, qdrant, grpc) behind these
protocols lets the domain modules stay plain Python that reads top to bottom.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from edge_svc.records import (
    Ack,
    Channel,
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

    async def checkpoints(self) -> dict[Channel, int]:
        """Central's highest contiguous applied sequence per channel for this edge."""
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
