"""The local vector subset, its fallback to central, and the frequency-based cache.

``search`` answers from the Qdrant Edge shard. When it finds fewer than
``limit`` hits at or above the threshold (or the best is under it) and the
link is online, it asks central for the rest — excluding this region and the
ids it already has — merges by score and answers. The vectors central sent
are written into the shard by a background task, so the answer never waits
for that write. Cached copies are tracked by access count: past
``qdrant.cache.size`` the least accessed go, and a copy not accessed for
``qdrant.cache.ttl`` goes too. Offline, the local answer is marked partial.

The local HNSW query runs on a small thread pool of its own, not on the event
loop: Qdrant Edge releases the GIL while it searches, so a search (about a
millisecond at 100k vectors, more at a million) no longer holds up every
other RPC of the edge, at the cost of one thread hand-off (tens of µs). Its
own pool, not ``asyncio.to_thread``'s, so that searches never queue behind
the outbox's and the cache's blocking work in the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aeterna_shared.config.model import QdrantCache
from aeterna_shared.errors import InvalidArgument
from edge_svc.link import LinkMonitor
from edge_svc.ports import Central, VectorStore
from edge_svc.records import ScoredRecord, VectorRecord, all_finite, now_ns
from edge_svc.sync import SyncEngine

_log = logging.getLogger(__name__)

MAX_LIMIT = 1000
# After this many vectors written since the last optimize, indexes are rebuilt in the background.
OPTIMIZE_AFTER = 1000
# Threads that run local searches: two cover the machines the edge runs on (searches scale with cores,
# and each one already fans out over the shard's segments inside Qdrant Edge).
SEARCH_THREADS = 2


@dataclass
class SearchResult:
    """A merged answer."""

    hits: list[ScoredRecord]
    local_count: int
    central_count: int
    partial: bool


@dataclass
class _CacheEntry:
    hits: int
    last_access: float


@dataclass
class VectorCache:
    """Which cached (central-fetched) vectors to keep: most accessed first, within a TTL."""

    size: int
    ttl_seconds: float
    entries: dict[str, _CacheEntry] = field(default_factory=dict)

    def touch(self, vector_id: str) -> None:
        """Count an access to a cached vector."""
        entry = self.entries.get(vector_id)
        if entry is not None:
            entry.hits += 1
            entry.last_access = time.monotonic()

    def admit(self, vector_ids: Sequence[str]) -> list[str]:
        """Track newly cached ids; returns the ids to evict (expired, then least accessed)."""
        now = time.monotonic()
        for vector_id in vector_ids:
            self.entries.setdefault(vector_id, _CacheEntry(1, now))
        evict = [vid for vid, e in self.entries.items() if now - e.last_access > self.ttl_seconds]
        for vid in evict:
            del self.entries[vid]
        overflow = len(self.entries) - self.size
        if overflow > 0:
            coldest = sorted(self.entries.items(), key=lambda kv: (kv[1].hits, kv[1].last_access))[:overflow]
            for vid, _ in coldest:
                del self.entries[vid]
                evict.append(vid)
        return evict


def validate_embedding(field_name: str, values: Sequence[float], dimension: int) -> None:
    """INVALID_ARGUMENT for a wrong dimension or a non-finite component."""
    if len(values) != dimension:
        raise InvalidArgument.for_field(
            field_name, f"has {len(values)} components; the configured dimension is {dimension}"
        )
    if not all_finite(list(values)):
        raise InvalidArgument.for_field(field_name, "contains NaN or infinite components")


@dataclass(frozen=True)
class VectorSettings:
    """What the vector index reads, from the sections that hold it."""

    region: str
    """``edge.region``: stamped on local writes."""
    dimension: int
    """``vectorDatabase.dimension``."""
    cache: QdrantCache
    """``qdrant.cache``: whether and how many central-fetched vectors are kept, for how long."""
    central_timeout: float
    """Seconds the fallback waits for central (``sync.centralServer.timeout``)."""


class VectorIndex:
    """Vectors at the edge: local writes, local search, fallback and cache."""

    def __init__(
        self,
        settings: VectorSettings,
        store: VectorStore,
        central: Central,
        link: LinkMonitor,
        sync: SyncEngine,
    ) -> None:
        self._store = store
        self._central = central
        self._link = link
        self._sync = sync
        self._region = settings.region
        self._dimension = settings.dimension
        self._cache_enabled = settings.cache.enabled
        self._cache = VectorCache(settings.cache.size, settings.cache.ttl.total_seconds())
        self._timeout = settings.central_timeout
        self._since_optimize = 0
        self._background: set[asyncio.Task[object]] = set()
        self._searches = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="vector-search")

    @property
    def dimension(self) -> int:
        """The configured embedding dimension."""
        return self._dimension

    async def upsert(self, tenant: str, vectors: list[VectorRecord]) -> int:
        """Write vectors locally and queue them for the vector sync."""
        if not vectors:
            raise InvalidArgument.for_field("vectors", "must hold at least one vector")
        seen: set[str] = set()
        for index, vector in enumerate(vectors):
            if not vector.vector_id:
                raise InvalidArgument.for_field(f"vectors[{index}].vector_id", "must not be empty")
            if vector.vector_id in seen:
                raise InvalidArgument.for_field(f"vectors[{index}].vector_id", "is repeated in the request")
            seen.add(vector.vector_id)
            validate_embedding(f"vectors[{index}].values", vector.values, self._dimension)
        stamp = now_ns()
        for vector in vectors:
            vector.region = self._region
            vector.tenant_id = tenant
            vector.update_time = vector.update_time or stamp
        # Queue first: a vector that is searchable locally must also be on its way to central.
        await self._sync.queue_vectors(vectors)
        await asyncio.to_thread(self._store.upsert, vectors, cached=False)
        self._since_optimize += len(vectors)
        if self._since_optimize >= OPTIMIZE_AFTER:
            self._since_optimize = 0
            self._spawn(asyncio.to_thread(self._store.optimize))
        return len(vectors)

    async def search(self, embedding: list[float], limit: int, threshold: float) -> SearchResult:
        """Local search, falling back to central when the local answer is short or weak."""
        validate_embedding("embedding", embedding, self._dimension)
        if limit <= 0 or limit > MAX_LIMIT:
            raise InvalidArgument.for_field("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
        if math.isnan(threshold):
            raise InvalidArgument.for_field("score_threshold", "must be a number")
        found = await asyncio.get_running_loop().run_in_executor(self._searches, self._store.search, embedding, limit)
        local = [hit for hit in found if hit.score >= threshold]
        for hit in local:
            self._cache.touch(hit.vector.vector_id)
        if len(local) >= limit:
            return SearchResult(local, len(local), 0, partial=False)
        if not self._link.online:
            return SearchResult(local, len(local), 0, partial=True)
        try:
            async with asyncio.timeout(self._timeout):
                remote = await self._central.search_vectors(
                    embedding, limit, threshold, [h.vector.vector_id for h in local]
                )
        except Exception as error:
            _log.warning("central vector search failed; answering from the local subset: %s", error)
            return SearchResult(local, len(local), 0, partial=True)
        known = {h.vector.vector_id for h in local}
        fresh = [h for h in remote if h.vector.vector_id not in known and h.score >= threshold]
        merged = sorted([*local, *fresh], key=lambda h: h.score, reverse=True)[:limit]
        taken = [h for h in merged if h.source == "central"]
        if taken and self._cache_enabled:
            self._spawn(self._cache_hits([h.vector for h in taken]))
        return SearchResult(merged, len(merged) - len(taken), len(taken), partial=False)

    async def _cache_hits(self, vectors: list[VectorRecord]) -> None:
        usable = [v for v in vectors if len(v.values) == self._dimension]
        if not usable:
            return
        await asyncio.to_thread(self._store.upsert, usable, cached=True)
        evict = self._cache.admit([v.vector_id for v in usable])
        if evict:
            await asyncio.to_thread(self._store.delete, evict)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("background vector work failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait for background caching and optimizing (tests and shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        """Cancel background work; let a search that is running finish (the store closes after this)."""
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self._searches.shutdown, wait=True)

    def count(self) -> int:
        """Vectors held locally."""
        return self._store.count()
