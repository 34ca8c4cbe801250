"""Scheduled snapshots on one replica only: the one holding the PostgreSQL advisory lock.

Two schedulers share one real database (each with its own ``AdvisoryLock``
connection and its own snapshot folder, so the folders show who wrote):
exactly one leads and writes; the leader keeps only the newest
``retention`` complete snapshots and never touches a folder without a
manifest. When the leader's session ends (its backend terminated, as a
failover or a dead process would) it stops leading, and when the leader is
gone the other replica takes over. Two real central processes on one database
tell which one leads in their metrics, and the survivor takes over when the
leader is killed.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from central_svc.snapshots import MANIFEST, SnapshotScheduler
from central_svc.store.advisory_lock import AdvisoryLock
from central_svc.store.database import Database
from central_svc.store.episodes import PostgresEpisodeStore
from tests.support.postgres import TEST_VECTOR_DIMENSION
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

INTERVAL = timedelta(milliseconds=300)
RETENTION = 2


def complete(directory: Path) -> list[Path]:
    """The snapshot folders in ``directory`` that have a manifest, oldest first."""
    return sorted(path for path in directory.glob("episodes-*") if (path / MANIFEST).is_file())


@dataclass
class Replica:
    """One scheduler with its lock, its folder and what it was told about leading."""

    scheduler: SnapshotScheduler
    lock: AdvisoryLock
    directory: Path
    told: list[bool] = field(default_factory=list)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, max_size=2)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def replica(database: Database, directory: Path) -> Replica:
    lock = AdvisoryLock(database.conninfo)
    told: list[bool] = []
    scheduler = SnapshotScheduler(
        PostgresEpisodeStore(database),
        directory,
        INTERVAL,
        lock=lock,
        retention=RETENTION,
        on_leading=told.append,
        check=0.2,
    )
    return Replica(scheduler, lock, directory, told)


async def test_one_replica_snapshots_keeps_the_newest_and_the_other_takes_over(
    database: Database, tmp_path: Path
) -> None:
    a, b = replica(database, tmp_path / "a"), replica(database, tmp_path / "b")
    for folder in (a.directory, b.directory):
        # A snapshot still being written (no manifest yet): retention must leave it alone.
        (folder / "episodes-00000000T000000000000Z").mkdir(parents=True)
    a.scheduler.start()
    await wait_until(lambda: a.scheduler.leading, "the first replica leads")
    b.scheduler.start()
    try:
        await wait_until(lambda: len(complete(a.directory)) >= RETENTION, "the leader wrote snapshots")
        first_kept = complete(a.directory)[0]
        await wait_until(lambda: not first_kept.exists(), "the leader deleted its oldest snapshot")
        assert len(complete(a.directory)) <= RETENTION
        assert (a.directory / "episodes-00000000T000000000000Z").is_dir()
        assert complete(b.directory) == []
        assert not b.scheduler.leading
        assert b.told == []

        # The leader's session ends (a failover, pg_terminate_backend): its hold on the lock is gone with it.
        pid = a.lock.backend_pid
        assert pid is not None
        with psycopg.connect(database.conninfo, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
        await wait_until(
            lambda: a.told[-2:] == [True, False] or len(a.told) >= 3, "the leader noticed it lost the lock"
        )
        await wait_until(lambda: a.scheduler.leading != b.scheduler.leading, "exactly one replica leads again")

        # The leader goes away for good; the other replica takes over and writes.
        leader, other = (a, b) if a.scheduler.leading else (b, a)
        await leader.scheduler.stop()
        await wait_until(lambda: other.scheduler.leading, "the other replica took over")
        before = set(complete(other.directory))
        await wait_until(lambda: set(complete(other.directory)) - before != set(), "the new leader writes snapshots")
        assert other.told[-1] is True
        assert leader.told[-1] is False
    finally:
        await a.scheduler.stop()
        await b.scheduler.stop()


def leads(central: ServiceProcess) -> bool | None:
    """``aeterna_snapshot_leader`` from the process's /metrics (None while it cannot be read)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{central.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("aeterna_snapshot_leader "):
            return float(line.split()[1]) == 1.0
    return None


async def test_two_central_processes_one_leads_and_the_survivor_takes_over(
    services: ServiceFactory, database_url: str, tmp_path: Path
) -> None:
    def document(name: str) -> dict[str, object]:
        return {
            "deploymentMode": "central",
            "central": {"dataDir": str(tmp_path / name), "snapshotRetention": RETENTION},
            "postgresql": {"url": database_url},
            "sync": {"listenPort": 0, "episodicMemory": {"snapshotInterval": "1s"}},
            "telemetry": {"metricsPort": 0},
            "vectorDatabase": {"dimension": TEST_VECTOR_DIMENSION},
        }

    first = services.make("central", "central-1", document("central-1")).start()
    second = services.make("central", "central-2", document("central-2")).start()
    await wait_until(lambda: {leads(first), leads(second)} == {True, False}, "exactly one central leads")
    leader, survivor = (first, second) if leads(first) else (second, first)
    leader_dir = tmp_path / ("central-1" if leader is first else "central-2") / "snapshots"
    await wait_until(lambda: len(complete(leader_dir)) >= 1, "the leader writes snapshots")
    assert "taking scheduled snapshots (leader)" in leader.log_text()
    assert "taking scheduled snapshots (leader)" not in survivor.log_text()

    leader.kill()  # SIGKILL: its database session ends, and the lock with it
    await wait_until(lambda: leads(survivor) is True, "the survivor took over")
    survivor_dir = tmp_path / ("central-2" if leader is first else "central-1") / "snapshots"
    await wait_until(lambda: len(complete(survivor_dir)) >= 1, "the new leader writes snapshots")
    assert survivor.log_text().count("taking scheduled snapshots (leader)") == 1
