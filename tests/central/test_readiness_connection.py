"""Central's readiness asks PostgreSQL on a connection of its own, never one of the request pool.

Against the real embedded PostgreSQL. Every connection of the request pool is
held busy (as 10,000 edge streams queued on a pool of 10 would hold it) and a
further request queues for one; ``Database.ping`` still answers and a
``ReadinessWatch`` stays ready, while the queued request is still waiting:
the probe did not queue behind it. The readiness connection's backend is then
terminated (a failover, an administrator): one ping may fail, the next one
reconnects and answers, so a broken connection does not stick. The probe
follows ``direct_url``, fails as ``Unavailable``, and ``close()`` closes its
connection with the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import pytest
from grpc_health.v1 import health

from aeterna_server.readiness import ReadinessWatch
from aeterna_shared.errors import Unavailable
from central_svc.server import SERVICE_NAMES
from central_svc.store.database import Database
from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.support.waiting import wait_until

POOL_SIZE = 3
GUARD_SECONDS = 30.0
"""Only so a regression fails instead of hanging; nothing here asserts a duration."""


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, max_size=POOL_SIZE)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def _backend_pids(conninfo: str) -> set[int]:
    """PIDs of the client backends connected to this test's database."""
    with psycopg.connect(conninfo, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return {row[0] for row in rows}


@contextlib.asynccontextmanager
async def busy_pool(database: Database) -> AsyncIterator[tuple[set[int], asyncio.Task[None]]]:
    """Hold every pooled connection, and queue one more request behind them.

    Yields the PIDs of the held connections and the queued request's task (still waiting for a
    connection while the pool is held).
    """
    release = asyncio.Event()
    pids: set[int] = set()
    entered = asyncio.Semaphore(0)

    async def hold() -> None:
        async with database.connection() as connection:
            pids.add(connection.info.backend_pid)
            entered.release()
            await release.wait()

    async def queued_request() -> None:
        async with database.connection() as connection:
            await connection.execute("SELECT 1")

    holders = [asyncio.create_task(hold()) for _ in range(POOL_SIZE)]
    queued: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(GUARD_SECONDS):
            for _ in range(POOL_SIZE):
                await entered.acquire()
        assert len(pids) == POOL_SIZE
        queued = asyncio.create_task(queued_request())
        await asyncio.sleep(0)  # let it ask the pool
        yield pids, queued
    finally:
        release.set()
        async with asyncio.timeout(GUARD_SECONDS):
            await asyncio.gather(*holders)
            if queued is not None:
                await queued


async def test_ping_answers_while_every_pooled_connection_is_busy(database: Database) -> None:
    watch = ReadinessWatch(health.aio.HealthServicer(), SERVICE_NAMES, database.ping, dependency="PostgreSQL")
    async with busy_pool(database) as (held, queued):
        async with asyncio.timeout(GUARD_SECONDS):
            await database.ping()
            assert await watch.check_once() is True
            assert await watch.check_once() is True
        # The probe answered while a request still waits for a pooled connection: it did not queue.
        assert not queued.done()
        readiness_pid = database.ping_backend_pid
        assert readiness_pid is not None
        assert readiness_pid not in held
        assert readiness_pid in _backend_pids(database.conninfo)
    assert watch.ready is True


async def test_a_terminated_readiness_connection_is_replaced_on_the_next_ping(database: Database) -> None:
    watch = ReadinessWatch(health.aio.HealthServicer(), SERVICE_NAMES, database.ping, dependency="PostgreSQL")
    async with asyncio.timeout(GUARD_SECONDS):
        assert await watch.check_once() is True
    first_pid = database.ping_backend_pid
    assert first_pid is not None

    with psycopg.connect(database.conninfo, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (first_pid,)).fetchone()
    assert row == (True,)

    async with asyncio.timeout(GUARD_SECONDS):
        # The first ping after the termination may fail (the connection's death is learned on it) ...
        with contextlib.suppress(Unavailable):
            await database.ping()
        # ... but the broken connection was dropped, and the next ping connects again.
        await database.ping()
        assert await watch.check_once() is True
    second_pid = database.ping_backend_pid
    assert second_pid is not None
    assert second_pid != first_pid
    assert watch.ready is True


async def test_ping_goes_direct_and_fails_as_unavailable(database_url: str, postgres_server: EmbeddedPostgres) -> None:
    # The request pool works, but the direct URL names a database that does not exist: the probe
    # follows the direct URL, and its failure is the project's Unavailable, never a driver error.
    database = Database(database_url, max_size=1, direct_url=postgres_server.url_for("no_such_database"))
    await database.open()
    try:
        async with database.connection() as connection:
            await connection.execute("SELECT 1")
        async with asyncio.timeout(GUARD_SECONDS):
            for _ in range(2):  # nothing broken sticks: each ping tries to connect again
                with pytest.raises(Unavailable) as caught:
                    await database.ping()
                assert caught.value.reason == "DATABASE_UNAVAILABLE"
                assert isinstance(caught.value.__cause__, psycopg.OperationalError)
                assert database.ping_backend_pid is None
    finally:
        await database.close()


async def test_close_closes_the_readiness_connection(database_url: str) -> None:
    database = Database(database_url, max_size=1)
    await database.open()
    try:
        async with asyncio.timeout(GUARD_SECONDS):
            await database.ping()
        pid = database.ping_backend_pid
        assert pid is not None
        assert pid in _backend_pids(database.conninfo)
    finally:
        await database.close()
    assert database.ping_backend_pid is None
    await wait_until(lambda: pid not in _backend_pids(database.conninfo), "the readiness backend is gone")
