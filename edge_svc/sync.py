"""The sync engine: collectors that fill the outbox and drains that empty it into central.

Order of operations is what makes it crash-safe:

1. the session collector reads dirty sessions (and their dirty versions) from
   the cache, commits them to the outbox as a batch, and only then clears the
   dirty marks whose version did not change meanwhile — a crash between the
   two resends a session (an idempotent upsert at central), never loses one;
2. a drain sends the oldest batches of a channel in sequence order, signed at
   send time, and deletes each batch only when its ack arrives;
3. on every (re)connect the engine asks central for its checkpoints, drops
   what central already applied, and drains the rest in order.

Sends are retried ``maxRetries`` times with exponential backoff and jitter;
after that the batches simply stay queued for the next round (``onError:
queue``). Nothing here calls central while the link is offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import Unavailable
from edge_svc.backoff import backoff_delay
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory
from edge_svc.metrics import SyncMetrics
from edge_svc.ports import Central
from edge_svc.records import Channel, DecisionRecord, EpisodeRecord, JsonDict, OutboxBatch, VectorRecord
from edge_svc.store.outbox import Outbox

_log = logging.getLogger(__name__)

# Batches sent per round trip window on one stream.
_WINDOW = 32
# How long a drain of the decisions channel waits to gather more decisions.
_DECISION_DRAIN_DELAY = 0.05
_DRAIN_ORDER = (Channel.SESSIONS, Channel.VECTORS, Channel.EPISODES, Channel.DECISIONS)


@dataclass(frozen=True)
class FlushResult:
    """What one flush achieved."""

    batches_acked: int
    items_acked: int
    items_pending: int


class SyncEngine:
    """Collectors, drains and periodic loops of every channel."""

    def __init__(
        self,
        config: AeternaConfig,
        outbox: Outbox,
        central: Central,
        link: LinkMonitor,
        sessions: SessionMemory,
        *,
        metrics: SyncMetrics | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._outbox = outbox
        self._central = central
        self._link = link
        self._sessions = sessions
        self._tenant = config.edge.tenant_id
        sync = config.sync
        self._session_batch = sync.session_batch_size
        self._max_bytes = sync.batch.max_bytes
        self._retries = {
            Channel.SESSIONS: sync.session_memory.max_retries,
            Channel.VECTORS: sync.central_server.max_retries,
            Channel.EPISODES: sync.central_server.max_retries,
            Channel.DECISIONS: sync.central_server.max_retries,
        }
        self._intervals = {
            Channel.SESSIONS: sync.session_interval.total_seconds(),
            Channel.VECTORS: sync.episodic_memory.vector_sync.interval.total_seconds(),
            Channel.EPISODES: sync.memory_layers.episodic.interval.total_seconds(),
        }
        self._retry_base = max(min(config.central_server.health_check.interval.total_seconds() / 4, 1.0), 0.05)
        self._locks = {channel: asyncio.Lock() for channel in Channel}
        self._collect_lock = asyncio.Lock()
        self._session_wake = asyncio.Event()
        self._decision_wake = asyncio.Event()
        self._decision_buffer: list[tuple[JsonDict, asyncio.Future[None]]] = []
        self._decision_arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        link.on_online(self.resume)

    # --- intake ---------------------------------------------------------------------

    def session_written(self) -> None:
        """Called on every session write; wakes the collector to check whether a batch filled up."""
        self._session_wake.set()

    async def record_decision(self, decision: DecisionRecord) -> None:
        """Record a decision durably: return only once it is committed to the outbox.

        Decisions that arrive while a commit is running share the next one
        (group commit), so concurrent Authorize calls pay for one fsync between
        them, yet no caller is answered before its decision is on disk: an edge
        killed right after answering still replays that decision.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decision_buffer.append((decision.to_json(), future))
        if self._tasks:
            self._decision_arrived.set()
        else:
            # No writer loop (the node is not started, e.g. in a unit test): commit inline.
            await self.commit_decisions()
        # The commit must finish even if this caller goes away, so other callers
        # sharing the same commit are not affected by its cancellation.
        await asyncio.shield(future)

    async def queue_vectors(self, vectors: Sequence[VectorRecord]) -> None:
        """Commit vectors written at the edge to the outbox, in batches of the vector-sync size."""
        if not (self._config.sync.enabled and self._config.sync.episodic_memory.vector_sync.enabled):
            return
        size = self._config.sync.episodic_memory.vector_sync.batch_size
        for start in range(0, len(vectors), size):
            chunk = [v.to_json() for v in vectors[start : start + size]]
            await asyncio.to_thread(self._outbox.enqueue, Channel.VECTORS, chunk)

    async def queue_episode(self, episode: EpisodeRecord) -> OutboxBatch:
        """Commit one episode to the outbox (eventual mode; also the first step of strong mode)."""
        return await asyncio.to_thread(self._outbox.enqueue, Channel.EPISODES, [episode.to_json()])

    async def store_episode_now(self, episode: EpisodeRecord) -> None:
        """Strong mode: return only once central acknowledged the episode; Unavailable otherwise."""
        if not self._link.online:
            raise Unavailable(
                "episodic memory is in strong mode and central is unreachable (edge offline); nothing was stored",
                reason="CENTRAL_OFFLINE",
            )
        batch = await self.queue_episode(episode)
        await self.drain(Channel.EPISODES)
        if await asyncio.to_thread(self._outbox.contains, Channel.EPISODES, batch.sequence):
            await asyncio.to_thread(
                self._outbox.discard, Channel.EPISODES, batch.sequence, "strong write not acknowledged by central"
            )
            raise Unavailable(
                "episodic memory is in strong mode and central did not acknowledge the episode; it was not stored",
                reason="CENTRAL_UNREACHABLE",
            )

    # --- collectors -----------------------------------------------------------------

    async def collect_sessions(self, max_batches: int = 1000) -> int:
        """Move dirty sessions into outbox batches; returns the number of sessions queued."""
        if not self._config.sync.session_sync_enabled:
            return 0
        queued = 0
        async with self._collect_lock:
            for _ in range(max_batches):
                sessions, versions = await self._sessions.dirty(self._tenant, self._session_batch)
                if not versions:
                    break
                present = {s.session_id for s in sessions}
                for missing in set(versions) - present:
                    _log.warning("session %s expired from the cache before it was synced", missing)
                for chunk in _split_by_bytes([s.to_json() for s in sessions], self._max_bytes):
                    await asyncio.to_thread(self._outbox.enqueue, Channel.SESSIONS, chunk)
                    queued += len(chunk)
                # Only now, with the batch durable, may the dirty marks go.
                await self._sessions.clear(self._tenant, versions)
                if len(versions) < self._session_batch:
                    break
        return queued

    async def commit_decisions(self) -> int:
        """Group-commit buffered decisions to the outbox, then release their callers; returns how many."""
        if not self._decision_buffer:
            return 0
        pending, self._decision_buffer = self._decision_buffer, []
        size = self._config.sync.batch.max_size
        try:
            for start in range(0, len(pending), size):
                chunk = [record for record, _ in pending[start : start + size]]
                await asyncio.to_thread(self._outbox.enqueue, Channel.DECISIONS, chunk)
        except BaseException as error:
            failure = error if isinstance(error, Exception) else RuntimeError("decision commit was interrupted")
            for _, future in pending:
                if not future.done():
                    future.set_exception(failure)
            raise
        for _, future in pending:
            if not future.done():
                future.set_result(None)
        self._decision_wake.set()
        return len(pending)

    # --- drains ---------------------------------------------------------------------

    async def drain(self, channel: Channel) -> tuple[int, int]:
        """Send the channel's queued batches in order; returns (batches, items) acknowledged."""
        batches_acked = items_acked = 0
        async with self._locks[channel]:
            await asyncio.to_thread(self._outbox.expire)
            failures = 0
            while self._link.online:
                batches = await asyncio.to_thread(self._outbox.pending, channel, _WINDOW)
                if not batches:
                    break
                try:
                    acks = await self._central.send(channel, batches)
                except Exception as error:
                    acks = []
                    _log.warning("sending %d %s batches failed: %s", len(batches), channel.value, error)
                    if self._metrics is not None:
                        self._metrics.send_failed(channel, len(batches))
                if acks:
                    for ack in acks:
                        if self._metrics is not None:
                            self._metrics.acked(channel, ack)
                        for item_id, reason, message in ack.failures:
                            _log.error(
                                "central refused %s item %s in batch %s: %s (%s)",
                                channel.value,
                                item_id,
                                ack.batch_id,
                                reason,
                                message,
                            )
                    checkpoint = max(a.checkpoint for a in acks)
                    removed = await asyncio.to_thread(self._outbox.ack, channel, [a.sequence for a in acks], checkpoint)
                    batches_acked += len(acks)
                    items_acked += removed
                if len(acks) == len(batches):
                    failures = 0
                    continue
                failures += 1
                if failures > self._retries[channel]:
                    _log.warning("%s: giving up after %d retries; batches stay queued", channel.value, failures - 1)
                    break
                await asyncio.sleep(backoff_delay(failures - 1, self._retry_base, 30.0))
        return batches_acked, items_acked

    async def resume(self) -> None:
        """After a (re)connect: drop what central already applied, then drain every channel in order."""
        await asyncio.sleep(random.uniform(0, min(self._retry_base, 0.5)))
        if not self._link.online:
            return
        try:
            checkpoints = await self._central.checkpoints()
        except Exception as error:
            _log.warning("could not read central's checkpoints, resending from the outbox: %s", error)
            checkpoints = {}
        for channel, sequence in checkpoints.items():
            if sequence:
                dropped = await asyncio.to_thread(self._outbox.ack, channel, [], sequence)
                if dropped:
                    _log.info(
                        "%s: %d items were already applied at central (checkpoint %d)", channel, dropped, sequence
                    )
        await self.collect_sessions()
        await self.commit_decisions()
        for channel in _DRAIN_ORDER:
            await self.drain(channel)

    async def flush(self) -> FlushResult:
        """Collect and send everything now; Unavailable while offline."""
        if not self._link.online:
            raise Unavailable(
                "the edge is offline from central; everything stays queued until the link is back",
                reason="CENTRAL_OFFLINE",
            )
        await self.collect_sessions()
        await self.commit_decisions()
        batches = items = 0
        for channel in _DRAIN_ORDER:
            acked_batches, acked_items = await self.drain(channel)
            batches += acked_batches
            items += acked_items
        pending = sum(s.pending_items for s in await asyncio.to_thread(self._outbox.stats))
        return FlushResult(batches, items, pending)

    # --- loops ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic loops."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._session_loop(), name="sync-sessions"),
            loop.create_task(self._decision_writer(), name="decision-writer"),
            loop.create_task(self._decision_loop(), name="sync-decisions"),
            loop.create_task(self._periodic(Channel.VECTORS), name="sync-vectors"),
            loop.create_task(self._periodic(Channel.EPISODES), name="sync-episodes"),
        ]

    async def stop(self) -> None:
        """Stop the loops and commit buffered decisions (nothing recorded is left in memory)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.commit_decisions()

    async def _session_loop(self) -> None:
        interval = self._intervals[Channel.SESSIONS]
        loop = asyncio.get_running_loop()
        while True:
            deadline = loop.time() + interval
            while loop.time() < deadline:
                self._session_wake.clear()
                # asyncio.timeout, unlike 3.11's wait_for, never swallows a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                        await self._session_wake.wait()
                if await self._sessions.dirty_count(self._tenant) >= self._session_batch:
                    break
            await self._guard(self._collect_and_drain_sessions())

    async def _collect_and_drain_sessions(self) -> None:
        await self.collect_sessions()
        if self._link.online:
            await self.drain(Channel.SESSIONS)

    async def _decision_writer(self) -> None:
        while True:
            await self._decision_arrived.wait()
            self._decision_arrived.clear()
            await self._guard(self.commit_decisions())

    async def _decision_loop(self) -> None:
        # Woken by new decisions; also every flushInterval, so that decisions left queued after a
        # failed round (central busy, rate limited) are retried while the link stays online.
        retry = max(self._config.sync.batch.flush_interval.total_seconds(), 0.05)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(retry):
                    await self._decision_wake.wait()
            await asyncio.sleep(_DECISION_DRAIN_DELAY)
            self._decision_wake.clear()
            if self._link.online:
                await self._guard(self.drain(Channel.DECISIONS))

    async def _periodic(self, channel: Channel) -> None:
        while True:
            await asyncio.sleep(self._intervals[channel])
            if self._link.online:
                await self._guard(self.drain(channel))

    @staticmethod
    async def _guard(work: object) -> None:
        """Run one round of a loop; an unexpected error is logged and the loop goes on."""
        try:
            await work  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("sync round failed; it will be retried next round")


def _split_by_bytes(items: list[JsonDict], max_bytes: int) -> list[list[JsonDict]]:
    """Split items so that each chunk stays under ``max_bytes`` when encoded (with headroom)."""
    budget = int(max_bytes * 0.8)
    chunks: list[list[JsonDict]] = []
    current: list[JsonDict] = []
    size = 0
    for item in items:
        item_size = len(json.dumps(item, separators=(",", ":")))
        if current and size + item_size > budget:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        chunks.append(current)
    return chunks
