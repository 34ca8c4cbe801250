"""The sync engine: collectors that fill the outbox and drains that empty it into central.

Order of operations is what makes it crash-safe:

1. the session collector reads dirty sessions (and their dirty versions) from
   the session store as changes (a whole session after a PutSession, else only
   the turns and state keys added since the last sync; each is the session's
   stored JSON document cut to what changed, see the shape map in
   ``edge_svc.records``), commits them to the outbox as a batch, and only
   then clears the dirty marks whose version did not change meanwhile — a
   crash between the two resends a change (central keeps each turn once, by
   message id), never loses one;
2. a drain sends the oldest batches of a channel in sequence order, signed at
   send time, and deletes each batch only when its ack arrives;
3. on every (re)connect the engine asks central for its checkpoints and for
   the stored acks of the oldest batches it still holds (``_settle_applied``):
   a batch central applied although its ack was lost is settled from its
   stored ack (the items central refused in it go to the dead letters), the
   rest at or below the checkpoint is dropped, all under the channel's lock
   (a send in flight settles its own ack first); then it drains in order;
4. only once central acknowledged a session's change does the session's
   local copy get its TTL (or, for a partial copy started offline, go), and
   only if it did not change again meanwhile: until then it can neither
   expire nor be evicted, so an acknowledged write stays readable offline.

Sends are retried ``maxRetries`` times with exponential backoff and jitter;
after that the batches simply stay queued for the next round (``onError:
queue``). Nothing here calls central while the link is offline.

Nothing central refuses blocks a channel:

* items central refuses one by one (the ``failures`` of an ack) move to the
  outbox's dead letters (cause ``refused:<REASON>``, central's message kept),
  in the same transaction that removes their acknowledged batch — step 2's
  "delete only when its ack arrives" still holds, the ack just tells which
  items go to the dead letters instead of nowhere; each is logged (WARNING)
  and counted (``aeterna_sync_refused_items_total``);
* a batch central refuses as a whole with a status that says its content can
  never be applied (INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION,
  ALREADY_EXISTS; see ``api.central_client.refusal_of``) is retried like any
  failure — after a failure the oldest batch is sent alone, so central's
  answer is about that batch — and once central refused that same batch more
  than ``maxRetries`` times it moves, whole, to the dead letters with central's
  reason. We do not bisect it into new batches: the refusal is per batch (the
  per-item judgement already happens at central), new batch ids and sequences
  for its halves would have to be threaded through the ledger, and an
  operator can requeue the dead letters (new sequence, new batch id) once the
  cause is fixed. Its sequence is simply never applied: the next batch's
  ``floor_sequence`` moves central's checkpoint past it. Any other failure
  (UNAVAILABLE, deadlines, RESOURCE_EXHAUSTED, authentication) is the link's
  or the configuration's, not the batch's, and the batch stays queued. A
  busy central (RESOURCE_EXHAUSTED, e.g. ``INGEST_BUSY`` from
  ``central_svc.ingest_gate``) names a delay in its RetryInfo; the next
  attempt waits at least that long.

A channel that cannot make progress while the link is online is *degraded*
(``degraded()``): its last ``DEGRADED_AFTER_ROUNDS`` drain rounds gave up
without acknowledging anything, or its oldest batch has not moved for longer
than three of the channel's sync intervals (at least ``STUCK_AFTER_SECONDS``).
``GetEdgeStatus``, ``aeterna status``, the ``aeterna_sync_degraded`` gauge
and the ``aeterna.sync`` health service report it, and ``flush`` (FlushSync)
answers UNAVAILABLE naming the channel and central's last answer instead of OK
when a channel made no progress in it. Items central could not store
(``aeterna_shared.limits``) are refused at the API before anything is queued,
items that would not fit a batch (``sync.batch.maxBytes``) here, and decisions and vectors
are split into batches by size as well as by count.

Decisions have their own order, and it holds in both
``aeterna.offline.decisionDurability`` modes: an Authorize is answered only
once its decision is committed to the outbox's SQLite database
(``record_decision``), so an edge killed right after answering still replays
it; what the commit survives is the mode's.

* ``process`` (the default): one INSERT into the outbox's journal on the event
  loop, without an fsync (``SqliteOutbox.journal``): once it returns, the row
  is in SQLite's write-ahead log in the OS page cache, so a crash or SIGKILL
  of the edge loses nothing; a power loss or kernel crash can lose what was
  journaled since the last ``decision-sync`` round (a checkpoint and an fsync
  every ``decisionSyncInterval``). The decision-writer task moves journaled
  decisions into ordinary batches, many per batch, in one transaction that
  also deletes them from the journal (exactly once, whatever crashes when);
  at start it moves what a killed run left.
* ``power``: the decision is group-committed into a batch with an fsync in a
  worker thread before the answer, so it survives a power loss too.

Neither survives the loss of the disk.

A batch whose ack was lost is not resent when central answers its stored ack
on reconnect; only a held batch beyond the oldest ``MAX_HELD_BATCH_IDS / 4``
of its channel is dropped by the checkpoint unseen (if central refused items
in it, central logged them). A named batch central did not answer for (an
older central, or a reply past its size budget) is sent again and answered
DUPLICATE with the same ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace

from aeterna_shared import limits
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import (
    AeternaError,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from edge_svc.backoff import backoff_delay
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory
from edge_svc.metrics import SyncMetrics
from edge_svc.ports import REFUSED_PREFIX, Central, Outbox
from edge_svc.records import (
    Ack,
    Channel,
    Checkpoints,
    DecisionRecord,
    EpisodeRecord,
    JsonDict,
    OutboxBatch,
    VectorRecord,
)

_log = logging.getLogger(__name__)

# Batches sent per round trip window on one stream.
_WINDOW = 32
# Oldest held batches per channel whose stored acks a reconnecting edge asks central for.
_NAMED_PER_CHANNEL = limits.MAX_HELD_BATCH_IDS // len(Channel)
# How long a drain of the decisions channel waits to gather more decisions.
_DECISION_DRAIN_DELAY = 0.05
# process mode: how long journaled decisions wait to be moved into a batch together (their callers do not wait).
_DECISION_LINGER = 0.05
_DRAIN_ORDER = (Channel.SESSIONS, Channel.VECTORS, Channel.EPISODES, Channel.DECISIONS)
# What ``send`` raises when central refuses a batch for its content (``api.central_client.refusal_of``).
_BATCH_REFUSALS = (InvalidArgument, FailedPrecondition, AlreadyExists)
# Share of ``sync.batch.maxBytes`` a batch's items may take when encoded as the outbox holds them.
_BATCH_BUDGET = 0.8

_Pending = tuple[JsonDict, str, "asyncio.Future[None]"]
"""A decision waiting for its commit: its JSON, encoded, and its caller's future."""

DEGRADED_AFTER_ROUNDS = 2
"""A channel whose last this many drain rounds gave up without progress (link online) is degraded."""
STUCK_AFTER_SECONDS = 300.0
"""The least time the oldest batch may sit still while online before its channel counts as degraded."""


@dataclass
class DrainResult:
    """What one drain round achieved."""

    batches: int = 0
    """Batches acknowledged."""
    items: int = 0
    """Items acknowledged (applied, or already held) by central."""
    dead_lettered: int = 0
    """Items central refused, now in the dead letters."""
    gave_up: bool = False
    """The round ended after ``maxRetries`` failed sends; what was left stays queued."""
    error: str = ""
    """Central's (or the link's) last answer to a failed send."""

    @property
    def progress(self) -> bool:
        """True when something left the queue for good (acknowledged or dead-lettered)."""
        return bool(self.batches or self.dead_lettered)


@dataclass
class _ChannelHealth:
    """What the drains saw of one channel, for ``degraded``."""

    failed_rounds: int = 0
    last_error: str = ""
    head: str = ""
    """Batch id of the oldest queued batch when a drain last looked ('' when the queue was empty)."""
    head_since: float = 0.0
    """Wall-clock time at which ``head`` became the oldest batch."""

    def saw(self, batch_id: str) -> None:
        if batch_id != self.head:
            self.head, self.head_since = batch_id, time.time()

    def round_ended(self, result: DrainResult) -> None:
        if result.progress or not self.head:
            self.failed_rounds, self.last_error = 0, ""
        elif result.gave_up:
            self.failed_rounds += 1
            self.last_error = result.error


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
        self.retry_base = max(min(config.central_server.health_check.interval.total_seconds() / 4, 1.0), 0.05)
        """First step of the edge's backoff toward central: drain retries, the reconnect jitter and the policy
        watch (``deps.open_edge`` hands it to the watcher); a quarter of the health-check interval, in [0.05, 1] s."""
        self._item_budget = int(self._max_bytes * _BATCH_BUDGET)
        self._health = {channel: _ChannelHealth() for channel in Channel}
        # Per channel: (batch id, how many times in a row central refused that batch as a whole).
        self._refusals: dict[Channel, tuple[str, int]] = {}
        flush = sync.batch.flush_interval.total_seconds()
        self._stuck_after = {
            channel: max(STUCK_AFTER_SECONDS, 3 * self._intervals.get(channel, flush)) for channel in Channel
        }
        self._locks = {channel: asyncio.Lock() for channel in Channel}
        self._collect_lock = asyncio.Lock()
        self._session_wake = asyncio.Event()
        self._decision_wake = asyncio.Event()
        self._decision_buffer: list[_Pending] = []
        self._decision_arrived = asyncio.Event()
        self._decision_buffered = asyncio.Event()
        self._journal_moved = False
        offline = config.aeterna.offline
        self._decision_fsync = offline.decision_durability == "power"
        self._decision_sync_every = offline.decision_sync_interval.total_seconds()
        self._tasks: list[asyncio.Task[None]] = []
        link.on_online(self.resume)

    # --- intake ---------------------------------------------------------------------

    def session_written(self) -> None:
        """Called on every session write; wakes the collector to check whether a batch filled up."""
        self._session_wake.set()

    async def record_decision(self, decision: DecisionRecord) -> None:
        """Record a decision durably: return only once it is committed to the outbox.

        ``decisionDurability: process``: one INSERT into the outbox's journal,
        here on the event loop, without an fsync (no thread hop, no disk
        wait): it survives a crash of this process at once, and a power loss
        once ``decision-sync`` ran (every ``decisionSyncInterval``). The
        decision-writer task moves journaled decisions into batches a moment
        later (``_DECISION_LINGER``), many per batch. When another commit holds
        the outbox, the decision is journaled by that task, in a thread.

        ``power``: decisions that arrive while a commit is running share the
        next one (group commit) in a worker thread, so concurrent Authorize
        calls pay for one fsync between them, yet no caller is answered before
        its decision is on disk.

        Either way an edge killed right after answering still replays the decision.
        """
        item = decision.to_json()
        encoded = self._fits(item, "decision")
        if not self._decision_fsync and self._outbox.journal(Channel.DECISIONS, encoded):
            self._decision_arrived.set()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A caller that went away (cancelled, past its deadline) never awaits the shielded future:
        # retrieve a commit failure here, so it is not reported later as "never retrieved".
        future.add_done_callback(_retrieve_failure)
        self._decision_buffer.append((item, encoded, future))
        if self._tasks:
            self._decision_arrived.set()
            self._decision_buffered.set()
        else:
            # No writer loop (the node is not started, e.g. in a unit test): commit inline. A failure
            # reaches this caller through its future, as it does every caller of a shared commit.
            with contextlib.suppress(Exception):
                await self.commit_decisions()
        # The commit must finish even if this caller goes away, so other callers
        # sharing the same commit are not affected by its cancellation.
        await asyncio.shield(future)

    async def queue_vectors(self, vectors: Sequence[VectorRecord]) -> None:
        """Commit vectors written at the edge to the outbox, in batches of the vector-sync size."""
        if not (self._config.sync.enabled and self._config.sync.episodic_memory.vector_sync.enabled):
            return
        items = []
        for index, vector in enumerate(vectors):
            items.append(vector.to_json())
            self._fits(items[-1], f"vectors[{index}]")
        size = self._config.sync.episodic_memory.vector_sync.batch_size
        for start in range(0, len(items), size):
            for chunk in _split_by_bytes(items[start : start + size], self._max_bytes):
                await asyncio.to_thread(self._outbox.enqueue, Channel.VECTORS, chunk)

    async def queue_episode(self, episode: EpisodeRecord) -> OutboxBatch:
        """Commit one episode to the outbox (eventual mode; also the first step of strong mode)."""
        item = episode.to_json()
        self._fits(item, "episode")
        return await asyncio.to_thread(self._outbox.enqueue, Channel.EPISODES, [item])

    def _fits(self, item: JsonDict, field: str) -> str:
        """The item's compact JSON; INVALID_ARGUMENT for an item no batch could carry to central (it would block
        its channel).

        (What central could not store is refused earlier, at the API, by the
        same checks central runs, ``aeterna_shared.limits``: ``edge_svc.api.codec``.)
        """
        encoded = json.dumps(item, separators=(",", ":"))
        size = len(encoded)
        if size > self._item_budget:
            raise InvalidArgument.for_field(
                field,
                f"is {size} bytes encoded; a sync batch carries at most {self._item_budget} (sync.batch.maxBytes)",
                reason="ITEM_TOO_LARGE",
            )
        return encoded

    async def store_episode_now(self, episode: EpisodeRecord) -> None:
        """Strong mode: return only once central acknowledged the episode; Unavailable otherwise."""
        if not self._link.online:
            raise Unavailable(
                "episodic memory is in strong mode and central is unreachable (edge offline); nothing was stored",
                reason="CENTRAL_OFFLINE",
            )
        batch = await self.queue_episode(episode)
        await self.drain(Channel.EPISODES)
        refused = await asyncio.to_thread(self._outbox.dead_letter_rows, Channel.EPISODES, batch.batch_id)
        if refused:
            raise InvalidArgument(
                f"central refused the episode, it was not stored: {refused[0].detail or refused[0].reason}",
                reason=refused[0].reason.removeprefix(REFUSED_PREFIX),
            )
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
                dirty = await self._sessions.dirty(self._tenant, self._session_batch)
                if not dirty.versions:
                    break
                if dirty.missing:
                    # Cannot happen with a store that keeps what it acknowledged; if it does, it is counted.
                    lost = [{"id": sid, "kind": "missing"} for sid in dirty.missing]
                    await asyncio.to_thread(
                        self._outbox.bury, Channel.SESSIONS, lost, "session missing from the session store"
                    )
                    _log.warning(
                        "%d dirty sessions were missing from the session store (it lost data): %s",
                        len(dirty.missing),
                        ", ".join(sorted(dirty.missing)[:10]),
                    )
                for chunk in _split_by_bytes(dirty.changes, self._max_bytes):
                    await asyncio.to_thread(self._outbox.enqueue, Channel.SESSIONS, chunk)
                    queued += len(chunk)
                # Only now, with the batch durable, may the dirty marks go.
                await self._sessions.clear(self._tenant, dirty.versions)
                if len(dirty.versions) < self._session_batch:
                    break
        return queued

    async def commit_decisions(self) -> int:
        """Commit buffered decisions and release their callers, then move the journal into batches.

        ``power``: the buffer is group-committed to the outbox with an fsync.
        ``process``: the buffer (decisions the event loop could not journal
        because the outbox was busy) is journaled in a thread. Either way the
        journal is moved into batches afterwards (in ``power`` mode it holds
        only what a ``process``-mode run left). Returns how many decisions
        were committed or moved.
        """
        pending, self._decision_buffer = self._decision_buffer, []
        if pending:
            try:
                if self._decision_fsync:
                    for chunk in _chunks(pending, self._config.sync.batch.max_size, self._item_budget):
                        await asyncio.to_thread(self._outbox.enqueue, Channel.DECISIONS, [item for item, _, _ in chunk])
                else:
                    await asyncio.to_thread(self._outbox.journal_many, Channel.DECISIONS, [e for _, e, _ in pending])
            except BaseException as error:
                failure = error if isinstance(error, Exception) else RuntimeError("decision commit was interrupted")
                for _, _, future in pending:
                    if not future.done():
                        future.set_exception(failure)
                raise
            for _, _, future in pending:
                if not future.done():
                    future.set_result(None)
        if not self._decision_fsync:
            return await self.move_decisions()
        if not self._journal_moved:  # power mode: once, what an earlier process-mode run left
            await self.move_decisions()
            self._journal_moved = True
        if pending:
            self._decision_wake.set()
        return len(pending)

    async def move_decisions(self) -> int:
        """Move journaled decisions into outbox batches (``sync.batch.maxSize`` each, by size too)."""
        moved = await asyncio.to_thread(
            self._outbox.move_journal, Channel.DECISIONS, self._config.sync.batch.max_size, self._item_budget
        )
        if moved:
            self._decision_wake.set()
        return moved

    async def sync_decisions(self) -> bool:
        """``process`` mode: make the journaled decisions survive a power loss (a checkpoint and an fsync)."""
        return await asyncio.to_thread(self._outbox.sync)

    # --- drains ---------------------------------------------------------------------

    async def drain(self, channel: Channel) -> tuple[int, int]:
        """Send the channel's queued batches in order; returns (batches, items) acknowledged."""
        result = await self.drain_round(channel)
        return result.batches, result.items

    async def drain_round(self, channel: Channel) -> DrainResult:
        """One drain round of ``channel``: send its queued batches in order until it is empty or gives up."""
        result = DrainResult()
        health = self._health[channel]
        async with self._locks[channel]:
            await asyncio.to_thread(self._outbox.expire)
            failures = 0
            while self._link.online:
                # After a failed send the oldest batch goes alone, so that central's answer is about it.
                batches = await asyncio.to_thread(self._outbox.pending, channel, 1 if failures else _WINDOW)
                if not batches:
                    health.head = ""
                    break
                health.saw(batches[0].batch_id)
                refusal: tuple[str, str] | None = None
                asked_wait = 0.0
                try:
                    acks = await self._central.send(channel, batches)
                except Exception as error:
                    acks = []
                    result.error = _describe(error)
                    if isinstance(error, _BATCH_REFUSALS):
                        refusal = (error.reason, error.message)
                    if isinstance(error, ResourceExhausted):  # central is busy and said when to come back
                        asked_wait = error.retry_after
                    _log.warning("sending %d %s batches failed: %s", len(batches), channel.value, result.error)
                    if self._metrics is not None:
                        self._metrics.send_failed(channel, len(batches))
                if acks:
                    await self._settle(channel, acks, result)
                    if channel is Channel.SESSIONS:
                        acked = {ack.sequence for ack in acks}
                        await self._release_sessions([b for b in batches if b.sequence in acked])
                if len(acks) == len(batches):
                    failures = 0
                    continue
                failures += 1
                if refusal is not None and await self._refused(channel, batches[0], refusal, result):
                    failures = 0
                    continue
                if failures > self._retries[channel]:
                    _log.warning(
                        "%s: giving up after %d retries; batches stay queued (last error: %s)",
                        channel.value,
                        failures - 1,
                        result.error or "central answered only part of the window",
                    )
                    result.gave_up = True
                    break
                await asyncio.sleep(max(backoff_delay(failures - 1, self.retry_base, 30.0), asked_wait))
        health.round_ended(result)
        return result

    async def _release_sessions(self, applied: Sequence[OutboxBatch]) -> None:
        """Central has applied these session batches: their local copies may expire (step 4 of the order above)."""
        await self._sessions.release(self._tenant, [item for batch in applied for item in batch.items])

    async def _settle(self, channel: Channel, acks: Sequence[Ack], result: DrainResult) -> None:
        """Remove acknowledged batches; the items central refused in them go to the dead letters, in one commit."""
        refused = {ack.sequence: ack.failures for ack in acks if ack.failures}
        removed, moved = await asyncio.to_thread(
            self._outbox.ack_refusing, channel, [a.sequence for a in acks], max(a.checkpoint for a in acks), refused
        )
        for ack in acks:
            if self._metrics is not None:
                self._metrics.acked(channel, ack)
        for item in moved:
            _log.warning(
                "central refused %s item %s (batch %s, sequence %d): %s: %s; moved to the dead letters",
                channel.value,
                item.item_id,
                item.batch_id,
                item.sequence,
                item.reason,
                item.message,
            )
            if self._metrics is not None:
                self._metrics.dead_lettered(channel, item.reason, 1)
        held = {(item.sequence, item.item_id) for item in moved}
        for ack in acks:
            for item_id, reason, message in ack.failures:
                if (ack.sequence, item_id) not in held:
                    _log.warning(
                        "central refused %s item %r of batch %s, which holds no such item: %s (%s)",
                        channel.value,
                        item_id,
                        ack.batch_id,
                        reason,
                        message,
                    )
        if self._refusals.get(channel, ("", 0))[0] in {ack.batch_id for ack in acks}:
            del self._refusals[channel]
        result.batches += len(acks)
        result.items += removed - len(moved)
        result.dead_lettered += len(moved)

    async def _refused(
        self, channel: Channel, batch: OutboxBatch, refusal: tuple[str, str], result: DrainResult
    ) -> bool:
        """Count central's refusal of ``batch`` as a whole; past ``maxRetries`` in a row it goes to the dead letters.

        Returns True when the batch was moved out (the drain goes on with the next one).
        """
        seen, count = self._refusals.get(channel, ("", 0))
        count = count + 1 if seen == batch.batch_id else 1
        self._refusals[channel] = (batch.batch_id, count)
        if count <= self._retries[channel]:
            return False
        del self._refusals[channel]
        reason, message = refusal
        moved = await asyncio.to_thread(self._outbox.discard, channel, batch.sequence, REFUSED_PREFIX + reason, message)
        ids = [str(item.get("id", "")) for item in batch.items]
        _log.warning(
            "central refused %s batch %s (sequence %d) as a whole %d times: %s; its %d items moved to the "
            "dead letters: %s",
            channel.value,
            batch.batch_id,
            batch.sequence,
            count,
            message,
            moved,
            ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else ""),
        )
        if self._metrics is not None and moved:
            self._metrics.dead_lettered(channel, reason, moved)
        result.dead_lettered += moved
        return True

    def degraded(self) -> dict[Channel, str]:
        """The channels that cannot make progress although the link is online, each with why (see above).

        Empty while the link is offline: an offline edge is offline, not degraded.
        """
        if not self._link.online:
            return {}
        now = time.time()
        online_since = self._link.state.changed_at
        found: dict[Channel, str] = {}
        for channel, health in self._health.items():
            last = f"; central's last answer: {health.last_error}" if health.last_error else ""
            if health.failed_rounds >= DEGRADED_AFTER_ROUNDS:
                found[channel] = f"the last {health.failed_rounds} send rounds made no progress{last}"
                continue
            still = now - max(health.head_since, online_since)
            if health.head and still > self._stuck_after[channel]:
                found[channel] = f"its oldest batch has not moved for {still:.0f} s while online{last}"
        return found

    async def resume(self) -> None:
        """After a (re)connect: drop what central already applied, then drain every channel in order."""
        await asyncio.sleep(random.uniform(0, min(self.retry_base, 0.5)))
        if not self._link.online:
            return
        named = await asyncio.to_thread(lambda: {c: self._outbox.held(c, _NAMED_PER_CHANNEL) for c in Channel})
        try:
            answer = await self._central.checkpoints(
                {c: [batch_id for _, batch_id in held] for c, held in named.items()}
            )
        except Exception as error:
            _log.warning("could not read central's checkpoints, resending from the outbox: %s", error)
            answer = Checkpoints({})
        for channel in Channel:
            if answer.sequences.get(channel, 0) or answer.acks.get(channel):
                await self._settle_applied(channel, answer, named[channel])
        await self.collect_sessions()
        await self.commit_decisions()
        for channel in _DRAIN_ORDER:
            await self.drain(channel)

    async def _settle_applied(self, channel: Channel, answer: Checkpoints, named: Sequence[tuple[int, str]]) -> None:
        """Remove what central applied although its acks were lost (step 3 of the order above).

        The batches whose stored acks central answered are settled like any ack (the items it
        refused go to the dead letters); a named batch at or below the checkpoint that central did
        not answer for stays, to be sent again and answered DUPLICATE with its ack; the rest at or
        below the checkpoint goes. Under the channel's lock: a send in flight, whose batch central
        applied before answering, settles its own ack first.
        """
        sequence = answer.sequences.get(channel, 0)
        acks = answer.acks.get(channel, ())
        async with self._locks[channel]:
            held: list[OutboxBatch] = []
            if channel is Channel.SESSIONS:  # their sessions are released below
                held = await asyncio.to_thread(self._outbox.pending, channel, _WINDOW * 32)
                still = {b.sequence: b.batch_id for b in held}
            elif acks or any(s <= sequence for s, _ in named):  # what a drain meanwhile settled is not held
                still = dict(await asyncio.to_thread(self._outbox.held, channel, _NAMED_PER_CHANNEL))
            else:
                still = {}
            stored = [ack for ack in acks if still.get(ack.sequence) == ack.batch_id]
            answered = {ack.batch_id for ack in acks}
            unanswered = [s for s, batch_id in named if s <= sequence and batch_id not in answered and s in still]
            floor = min([sequence, *(s - 1 for s in unanswered)])
            result = DrainResult()
            if stored:  # one commit: the settled batches, their refused items, and the drop up to ``floor``
                await self._settle(channel, [replace(ack, checkpoint=floor) for ack in stored], result)
            elif floor:
                result.items = await asyncio.to_thread(self._outbox.ack, channel, [], floor)
            if channel is Channel.SESSIONS:
                # Applied at central: their sessions' local copies may expire too.
                settled = {ack.sequence for ack in stored}
                await self._release_sessions([b for b in held if b.sequence <= floor or b.sequence in settled])
        if result.batches or result.items:
            _log.info(
                "%s: applied at central although their acks were lost: %d batches settled from central's "
                "stored acks (%d items to the dead letters), the rest up to checkpoint %d dropped",
                channel.value,
                len(stored),
                result.dead_lettered,
                floor,
            )

    async def flush(self) -> FlushResult:
        """Collect and send everything now; Unavailable while offline, or when a channel made no progress."""
        if not self._link.online:
            raise Unavailable(
                "the edge is offline from central; everything stays queued until the link is back",
                reason="CENTRAL_OFFLINE",
            )
        await self.collect_sessions()
        await self.commit_decisions()
        batches = items = 0
        stuck: list[tuple[Channel, str]] = []
        for channel in _DRAIN_ORDER:
            result = await self.drain_round(channel)
            batches += result.batches
            items += result.items
            if result.gave_up and not result.progress and self._link.online:
                stuck.append((channel, result.error or "central answered only part of the batches"))
        pending = sum(s.pending_items for s in await asyncio.to_thread(self._outbox.stats))
        if stuck:
            # Not OK: items that an agent was told are on their way are stuck; say where and why.
            raise Unavailable(
                "sync made no progress although central is online: "
                + "; ".join(f"{channel.value} channel: {error}" for channel, error in stuck)
                + f" ({pending} items stay queued)",
                reason="SYNC_STUCK",
                metadata={"channels": ",".join(channel.value for channel, _ in stuck), "pending_items": str(pending)},
            )
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
        if not self._decision_fsync:
            self._tasks.append(loop.create_task(self._decision_sync_loop(), name="decision-sync"))
        self._decision_arrived.set()  # move what a previous run left in the journal

    async def stop(self) -> None:
        """Stop the loops and commit buffered decisions (nothing recorded is left in memory)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.commit_decisions()
        await self.sync_decisions()

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
        # Also moves what a previous run journaled (set at start).
        while True:
            await self._decision_arrived.wait()
            if not self._decision_fsync and not self._decision_buffer:
                # process mode: the callers were answered already; linger so that a batch gathers many
                # decisions. A decision waiting in the buffer (the outbox was busy) cuts it short.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DECISION_LINGER):
                        await self._decision_buffered.wait()
            self._decision_arrived.clear()
            self._decision_buffered.clear()
            await self._guard(self.commit_decisions())

    async def _decision_sync_loop(self) -> None:
        # process mode: bound what a power loss can take to one decisionSyncInterval.
        while True:
            await asyncio.sleep(self._decision_sync_every)
            await self._guard(self.sync_decisions())

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
    async def _guard(work: Awaitable[object]) -> None:
        """Run one round of a loop; an unexpected error is logged and the loop goes on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("sync round failed; it will be retried next round")


def _describe(error: BaseException) -> str:
    """One line about a failed send: central's status and message, or the error."""
    if isinstance(error, AeternaError):
        return f"{error.message} [{error.reason}]"
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):  # a gRPC error, described without importing grpc here
        name = getattr(code(), "name", code())
        return f"{name}: {details()}"
    return f"{type(error).__name__}: {error}"[:500]


def _split_by_bytes(items: list[JsonDict], max_bytes: int) -> list[list[JsonDict]]:
    """Split items so that each chunk stays under ``max_bytes`` when encoded (with headroom)."""
    budget = int(max_bytes * _BATCH_BUDGET)
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


def _chunks(pending: list[_Pending], max_items: int, max_bytes: int) -> list[list[_Pending]]:
    """Buffered decisions cut into batches of at most ``max_items`` and ``max_bytes`` encoded."""
    chunks: list[list[_Pending]] = []
    current: list[_Pending] = []
    used = 0
    for entry in pending:
        if current and (len(current) >= max_items or used + len(entry[1]) > max_bytes):
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += len(entry[1])
    if current:
        chunks.append(current)
    return chunks


def _retrieve_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
