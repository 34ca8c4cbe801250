"""The drain's bookkeeping of refusals, rounds and progress (pure logic around a scripted central).

A fake of the ``Central`` port is fine here: what is tested is the sync engine's own decisions —
when a batch refused as a whole is dead-lettered, when a channel counts as degraded, when FlushSync
must not say OK. The same behaviour against real processes is in ``tests/fault/test_poison.py``.
The outbox is the real SQLite one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from aeterna_shared import limits
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import InvalidArgument, ResourceExhausted, Unavailable
from edge_svc.link import LinkMonitor
from edge_svc.records import Ack, Channel, Checkpoints, OutboxBatch
from edge_svc.store.outbox import REFUSED_PREFIX, ChannelLimits, SqliteOutbox
from edge_svc.sync import DEGRADED_AFTER_ROUNDS, STUCK_AFTER_SECONDS, SyncEngine
from tests.edge.conftest import closed_port, edge_document


class ScriptedCentral:
    """Acks every batch, except those ``refuse`` names (raises for them) or all while ``down``."""

    def __init__(self) -> None:
        self.refuse: dict[str, Exception] = {}
        self.down: Exception | None = None
        self.sent: list[list[int]] = []
        self.item_failures: dict[int, tuple[tuple[str, str, str], ...]] = {}
        self.script: list[Exception | None] = []
        """Errors for the next sends, in order (None: answer normally)."""
        self.applied: dict[Channel, int] = {}
        """The checkpoints ``checkpoints`` answers."""
        self.stored: dict[Channel, list[Ack]] = {}
        """The stored acks ``checkpoints`` answers (as central does, only those of batches named)."""
        self.named: list[dict[Channel, Sequence[str]]] = []

    async def send(self, channel: Channel, batches: Sequence[OutboxBatch]) -> list[Ack]:
        self.sent.append([b.sequence for b in batches])
        scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            raise scripted
        if self.down is not None:
            raise self.down
        acks: list[Ack] = []
        for batch in batches:
            if batch.batch_id in self.refuse:
                if acks:
                    return acks
                raise self.refuse[batch.batch_id]
            failures = self.item_failures.get(batch.sequence, ())
            acks.append(
                Ack(batch.sequence, batch.batch_id, len(batch.items) - len(failures), len(failures), 0, failures)
            )
        return acks

    async def checkpoints(self, held: Mapping[Channel, Sequence[str]]) -> Checkpoints:
        self.named.append(dict(held))
        return Checkpoints(dict(self.applied), {c: list(a) for c, a in self.stored.items()})


async def _never_probed(_timeout: float) -> bool:
    raise AssertionError("the link is set online directly; it is never started")


@pytest.fixture
def engine(tmp_path: Path) -> tuple[SyncEngine, SqliteOutbox, ScriptedCentral]:
    config = AeternaConfig.model_validate(
        edge_document(
            tmp_path / "edge",
            closed_port(),
            **{
                "centralServer.healthCheck.interval": "50ms",
                # No session store here: flush() would collect sessions first.
                "sync.memoryLayers.session.syncEnabled": False,
            },
        )
    )
    outbox = SqliteOutbox(tmp_path / "outbox.db", {c: ChannelLimits(1000, 3600) for c in Channel})
    central = ScriptedCentral()
    link = LinkMonitor(config.central_server.health_check, _never_probed)
    link.state.online = True  # set directly: no reconnect drain racing the test
    # No session store (hence the ignore): session sync is off in this config, so the engine never reads one.
    sync = SyncEngine(config, outbox, central, link, sessions=None)  # type: ignore[arg-type]  # no session store
    return sync, outbox, central


async def test_a_batch_refused_as_a_whole_moves_to_the_dead_letters_after_the_retries(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    sync, outbox, central = engine
    bad = outbox.enqueue(Channel.DECISIONS, [{"id": "d1"}, {"id": "d2"}])
    good = outbox.enqueue(Channel.DECISIONS, [{"id": "d3"}])
    central.refuse[bad.batch_id] = InvalidArgument("central refused the batch: too large", reason="BATCH_TOO_LARGE")
    result = await sync.drain_round(Channel.DECISIONS)
    retries = 2  # edge_document's sync.centralServer.maxRetries
    # The window first, then the refused batch alone until central refused it more than maxRetries times.
    assert central.sent == [[1, 2]] + [[1]] * retries + [[2]]
    assert (result.batches, result.items, result.dead_lettered, result.gave_up) == (1, 1, 2, False)
    [row] = outbox.dead_letter_rows(Channel.DECISIONS)
    assert (row.batch_id, row.reason, row.items) == (bad.batch_id, REFUSED_PREFIX + "BATCH_TOO_LARGE", bad.items)
    assert "too large" in row.detail
    assert outbox.pending(Channel.DECISIONS, 10) == []
    assert good.sequence == 2


async def test_refusals_of_one_batch_count_across_rounds(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    """Other errors in between (a stream's client-side INTERNAL, a restart) do not reset the count, and
    neither does the end of a round: a batch central keeps refusing cannot block its channel for ever."""
    sync, outbox, central = engine
    bad = outbox.enqueue(Channel.EPISODES, [{"id": "e1"}])
    central.refuse[bad.batch_id] = InvalidArgument("no", reason="INVALID_ARGUMENT")
    restarting = Unavailable("central is restarting")
    central.script = [None, restarting, None, restarting]  # refused, failed, refused | failed, refused
    first = await sync.drain_round(Channel.EPISODES)
    assert (first.gave_up, first.dead_lettered) == (True, 0)
    second = await sync.drain_round(Channel.EPISODES)
    assert (second.gave_up, second.dead_lettered) == (False, 1)
    assert len(central.sent) == 5
    assert outbox.pending(Channel.EPISODES, 10) == []


async def test_a_busy_central_is_retried_no_sooner_than_it_asked_and_keeps_the_batch(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESOURCE_EXHAUSTED (``GrpcCentral`` raises ``ResourceExhausted`` with central's RetryInfo delay) is not a
    refusal: the batch stays queued, and the retry waits at least the delay central named, not the short backoff."""
    sync, outbox, central = engine
    batch = outbox.enqueue(Channel.DECISIONS, [{"id": "d1"}])
    central.script = [ResourceExhausted("central is busy", reason="INGEST_BUSY", retry_after=7.5)]
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    result = await sync.drain_round(Channel.DECISIONS)
    assert central.sent == [[1], [1]]
    assert waits == [7.5]  # the engine's own first backoff is far shorter (retry_base 0.05 s here)
    assert (result.batches, result.dead_lettered, result.gave_up) == (1, 0, False)
    assert outbox.pending(Channel.DECISIONS, 10) == []
    assert outbox.dead_letter_rows(Channel.DECISIONS) == []
    assert batch.sequence == 1


async def test_item_failures_in_an_ack_are_dead_lettered(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    sync, outbox, central = engine
    batch = outbox.enqueue(Channel.VECTORS, [{"id": "v1"}, {"id": "v2"}])
    central.item_failures[batch.sequence] = (("v2", "INVALID_ITEM", "vectors[1].payload.k: contains a NUL"),)
    result = await sync.drain_round(Channel.VECTORS)
    assert (result.batches, result.items, result.dead_lettered) == (1, 1, 1)
    [row] = outbox.dead_letter_rows(Channel.VECTORS)
    assert row.items == [{"id": "v2"}]
    assert row.reason == REFUSED_PREFIX + "INVALID_ITEM"


async def test_a_channel_without_progress_is_degraded_and_flush_says_so(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    sync, outbox, central = engine
    outbox.enqueue(Channel.DECISIONS, [{"id": "d1"}])
    central.down = Unavailable("database unreachable", reason="DATABASE_UNAVAILABLE")
    for _ in range(DEGRADED_AFTER_ROUNDS):
        assert Channel.DECISIONS not in sync.degraded()
        with pytest.raises(Unavailable) as caught:
            await sync.flush()
        assert caught.value.reason == "SYNC_STUCK"
        assert "decisions channel: database unreachable [DATABASE_UNAVAILABLE]" in caught.value.message
        assert caught.value.metadata["channels"] == "decisions"
    reasons = sync.degraded()
    assert set(reasons) == {Channel.DECISIONS}
    assert "database unreachable" in reasons[Channel.DECISIONS]
    # Offline is offline, not degraded.
    sync._link.state.online = False
    assert sync.degraded() == {}
    sync._link.state.online = True
    central.down = None
    result = await sync.flush()
    assert result.items_pending == 0
    assert sync.degraded() == {}


async def test_an_oldest_batch_that_does_not_move_degrades_its_channel(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that never ends (sends hanging up to their deadline, retried) is caught by the clock rule."""
    sync, outbox, central = engine
    outbox.enqueue(Channel.EPISODES, [{"id": "e1"}])
    central.down = Unavailable("slow")
    sync._link.state.changed_at = 0.0
    now = [1_000_000.0]
    monkeypatch.setattr("edge_svc.sync.time.time", lambda: now[0])
    await sync.drain_round(Channel.EPISODES)  # one failed round: not degraded by the round rule yet
    assert sync.degraded() == {}
    now[0] += max(STUCK_AFTER_SECONDS, sync._stuck_after[Channel.EPISODES]) + 1
    reasons: dict[Any, str] = sync.degraded()
    assert "has not moved for" in reasons[Channel.EPISODES]


async def test_a_reconnect_checkpoint_does_not_drop_a_batch_whose_ack_is_settling(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    """Found in CI (``test_poison.py``'s item refusals, 0 dead letters instead of 3): right after the link
    came up, a drain's batch was applied at central and the reconnect's checkpoint request saw it before the
    drain had settled the ack; the checkpoint drop removed the batch, and the items central had refused in
    it were neither dead-lettered nor counted."""
    sync, outbox, central = engine
    batch = outbox.enqueue(Channel.VECTORS, [{"id": "v1"}, {"id": "v2"}])
    central.item_failures[batch.sequence] = (("v2", "BAD_VECTOR", "vector has 8 dimensions"),)
    applied, answer = asyncio.Event(), asyncio.Event()
    answered = central.send

    async def applied_then_held(channel: Channel, batches: Sequence[OutboxBatch]) -> list[Ack]:
        acks = await answered(channel, batches)
        applied.set()  # central has committed the batch: its checkpoint now says 1
        await answer.wait()
        return acks

    central.send = applied_then_held  # type: ignore[method-assign]
    central.applied = {Channel.VECTORS: batch.sequence}
    sync.retry_base = 0.0  # resume's jitter
    drain = asyncio.create_task(sync.drain_round(Channel.VECTORS))
    await applied.wait()
    resume = asyncio.create_task(sync.resume())
    await asyncio.sleep(0.2)  # resume reads the checkpoints and reaches its drop
    answer.set()
    result = await drain
    await resume
    assert (result.batches, result.items, result.dead_lettered) == (1, 1, 1)
    [row] = outbox.dead_letter_rows(Channel.VECTORS)
    assert (row.items, row.reason) == ([{"id": "v2"}], REFUSED_PREFIX + "BAD_VECTOR")
    assert outbox.pending(Channel.VECTORS, 10) == []


async def test_a_batch_whose_ack_was_lost_is_settled_from_centrals_stored_ack(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    """Central applied batches 1 and 2 but their acks were lost. On reconnect the edge names what it holds;
    central answers the stored ack of 1, with the item it refused, and not (an older central, or a reply
    cut at its size budget) that of 2: 1 is settled and its refused item dead-lettered, 2 is sent again
    (central answers DUPLICATE), 3 is sent for the first time. Nothing is dropped unseen."""
    sync, outbox, central = engine
    first = outbox.enqueue(Channel.VECTORS, [{"id": "v1"}, {"id": "v2"}])
    second = outbox.enqueue(Channel.VECTORS, [{"id": "v3"}])
    third = outbox.enqueue(Channel.VECTORS, [{"id": "v4"}])
    failure = ("v2", "BAD_VECTOR", "vector has 8 dimensions, central is configured for 16")
    central.applied = {Channel.VECTORS: 2}
    central.stored = {Channel.VECTORS: [Ack(1, first.batch_id, 1, 1, 2, (failure,))]}
    sync.retry_base = 0.0
    await sync.resume()
    assert central.named[0][Channel.VECTORS] == [first.batch_id, second.batch_id, third.batch_id]
    assert central.sent == [[2, 3]]
    [row] = outbox.dead_letter_rows(Channel.VECTORS)
    assert (row.batch_id, row.items, row.reason) == (first.batch_id, [{"id": "v2"}], REFUSED_PREFIX + "BAD_VECTOR")
    assert outbox.pending(Channel.VECTORS, 10) == []


async def test_without_stored_acks_the_checkpoint_still_drops_what_was_not_named(
    engine: tuple[SyncEngine, SqliteOutbox, ScriptedCentral],
) -> None:
    """Batches beyond the ones named (the oldest ``MAX_HELD_BATCH_IDS / 4`` per channel) go by the checkpoint."""
    sync, outbox, central = engine
    named = limits.MAX_HELD_BATCH_IDS // len(Channel)
    for n in range(named + 2):
        outbox.enqueue(Channel.DECISIONS, [{"id": f"d{n}"}])
    central.applied = {Channel.DECISIONS: named + 1}
    held = outbox.pending(Channel.DECISIONS, named)
    central.stored = {Channel.DECISIONS: [Ack(b.sequence, b.batch_id, 1, 0, named + 1) for b in held]}
    sync.retry_base = 0.0
    await sync.resume()
    assert len(central.named[0][Channel.DECISIONS]) == named
    assert central.sent == [[named + 2]]  # only the batch above the checkpoint
    assert outbox.dead_letter_rows(Channel.DECISIONS) == []
    assert outbox.pending(Channel.DECISIONS, 10) == []
