"""``aeterna.offline.decisionDurability``: what an answered decision is committed as, in each mode.

Real edge nodes on real Redis, SQLite and cedarpy; the outbox database is read
back through connections of the test's own, as an operator would. The SIGKILL
guarantee itself is proven against real processes in
``tests/fault/test_crash.py::test_sigkill_edge_mid_authorize``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aeterna_shared.config import AeternaConfig
from edge_svc.deps import EdgeDeps, open_edge, outbox_path
from edge_svc.records import Channel, PolicyBundleRecord
from tests.edge.conftest import BUNDLE_POLICY, closed_port, edge_document

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def config_for(data_dir: Path, redis_url: str, durability: str | None) -> AeternaConfig:
    document = edge_document(data_dir, closed_port())
    document["cache"] = {"url": redis_url}
    if durability is not None:
        document["aeterna"] = {"offline": {"decisionDurability": durability}}
    return AeternaConfig.model_validate(document)


@contextlib.asynccontextmanager
async def edge(config: AeternaConfig, *, start: bool) -> AsyncIterator[EdgeDeps]:
    """An edge node; ``start=False`` keeps its loops (the decision writer) stopped, so nothing moves by itself."""
    resources = await open_edge(config)
    if start:
        await resources.node.start()
    resources.node.agent.apply(PolicyBundleRecord(version=1, policies=(("approve.cedar", BUNDLE_POLICY),)))
    try:
        yield resources
    finally:
        if start:
            await resources.node.shutdown(0.1)
        await resources.close()


def rows(data_dir: Path) -> dict[str, list[str]]:
    """Decision ids in the journal and in queued batches, read from the database file with a new connection."""
    with contextlib.closing(sqlite3.connect(outbox_path(data_dir))) as db:
        journal = [str(item) for (item,) in db.execute("SELECT item FROM journal WHERE channel = 'decisions'")]
        batches = [str(payload) for (payload,) in db.execute("SELECT payload FROM batches WHERE channel = 'decisions'")]
    return {"journal": journal, "batches": batches}


async def decide(resources: EdgeDeps) -> str:
    verdict = await resources.node.agent.authorize('User::"alice"', 'Action::"approve"', 'Doc::"d"', {"risk": 1}, "")
    assert verdict.allowed
    return verdict.decision_id


async def test_the_default_is_process_and_journals_without_an_fsync(tmp_path: Path, redis_url: str) -> None:
    config = config_for(tmp_path / "edge", redis_url, None)
    assert config.aeterna.offline.decision_durability == "process"
    async with edge(config, start=False) as resources:
        outbox = resources.local.outbox
        # The journal's own connection commits without an fsync; every other write keeps synchronous=FULL.
        assert outbox._journal is not None
        assert SYNCHRONOUS[outbox._journal.execute("PRAGMA synchronous").fetchone()[0]] == "NORMAL"
        assert SYNCHRONOUS[outbox._db.execute("PRAGMA synchronous").fetchone()[0]] == "FULL"
        decision = await decide(resources)
        # Answered: the decision is committed (another connection sees it), in the journal, not yet a batch.
        found = rows(tmp_path / "edge")
        assert [decision in item for item in found["journal"]] == [True]
        assert found["batches"] == []
        assert {s.channel: s.pending_items for s in outbox.stats()}[Channel.DECISIONS] == 1
        assert outbox.sync() is True  # a checkpoint and an fsync of the log: now it survives a power loss
        assert outbox.sync() is False  # nothing journaled since
        # The writer moves it into a batch, exactly once.
        assert await resources.node.sync.move_decisions() == 1
        assert await resources.node.sync.move_decisions() == 0
        found = rows(tmp_path / "edge")
        assert found["journal"] == []
        assert [decision in payload for payload in found["batches"]] == [True]


async def test_power_mode_commits_a_batch_with_an_fsync_before_answering(tmp_path: Path, redis_url: str) -> None:
    config = config_for(tmp_path / "edge", redis_url, "power")
    async with edge(config, start=False) as resources:
        decision = await decide(resources)
        found = rows(tmp_path / "edge")
        assert found["journal"] == []
        assert [decision in payload for payload in found["batches"]] == [True]
        # Committed through the outbox's own connection, which fsyncs every commit.
        assert SYNCHRONOUS[resources.local.outbox._db.execute("PRAGMA synchronous").fetchone()[0]] == "FULL"
        assert resources.local.outbox.sync() is False  # nothing was committed without an fsync


@pytest.mark.parametrize("next_mode", ["process", "power"])
async def test_a_journal_left_by_a_killed_edge_is_queued_once_at_start(
    tmp_path: Path, redis_url: str, next_mode: str
) -> None:
    """Journaled, answered, then the process is gone before the writer moved them: the next start queues them."""
    data_dir = tmp_path / "edge"
    async with edge(config_for(data_dir, redis_url, "process"), start=False) as resources:
        decided = [await decide(resources) for _ in range(3)]
    assert len(rows(data_dir)["journal"]) == 3
    async with edge(config_for(data_dir, redis_url, next_mode), start=True) as resources:

        async def moved() -> bool:
            return not rows(data_dir)["journal"]

        for _ in range(200):
            if await moved():
                break
            await asyncio.sleep(0.05)
        queued = [item["id"] for batch in resources.node.outbox.pending(Channel.DECISIONS, 10) for item in batch.items]
    assert queued == decided


async def test_a_busy_outbox_delays_the_answer_until_the_decision_is_committed(tmp_path: Path, redis_url: str) -> None:
    """Another connection holds SQLite's write lock: the event loop does not wait for it, the answer does."""
    data_dir = tmp_path / "edge"
    async with edge(config_for(data_dir, redis_url, "process"), start=True) as resources:
        with contextlib.closing(sqlite3.connect(outbox_path(data_dir), isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            answer = asyncio.ensure_future(decide(resources))
            await asyncio.sleep(0.3)
            # Not answered while nothing could be committed; the event loop kept running (this test did).
            assert not answer.done()
            other.execute("ROLLBACK")
        decision = await asyncio.wait_for(answer, 10)
        found = rows(data_dir)
        assert any(decision in item for item in found["journal"] + found["batches"])
