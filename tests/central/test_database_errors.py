"""psycopg's errors are mapped at the adapter: a store raises the project's errors, never a driver exception.

Against the real embedded PostgreSQL: the backend of the pool's only connection
is terminated (as a failover, a restart or ``pg_terminate_backend`` would), and
the next store call, a read or a batch written through the ledger, fails with
``Unavailable`` / ``DATABASE_UNAVAILABLE`` (UNAVAILABLE on the wire), the very
error and message central has always answered. Nothing of the failed batch is
kept, and the call after it, on a fresh connection, works.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest

from aeterna_shared.errors import Unavailable
from central_svc.batches import AckStatus, BatchMeta, Channel
from central_svc.ports import Applied, Transaction
from central_svc.store.database import Database
from central_svc.store.edges import PostgresEdgeStore
from central_svc.store.ledger import PostgresBatchLedger

MESSAGE = "central's database is unreachable; retry later"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A pool of one connection, so the connection whose backend dies is the one the next call gets."""
    database = Database(database_url, max_size=1)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def drop_connection(database: Database) -> None:
    """Terminate the backend of the pool's connection from outside, and wait until it is gone."""
    async with database.connection() as connection:
        pid = connection.info.backend_pid
    with psycopg.connect(database.conninfo, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
    assert row == (True,)


def _meta(sequence: int) -> BatchMeta:
    batch_id = str(uuid.uuid4())
    return BatchMeta(
        batch_id=batch_id,
        sequence=sequence,
        agent_id="edge-db",
        region="r",
        sent_time=datetime.now(UTC),
        channel=Channel.SESSIONS,
        digest=batch_id.encode(),
    )


async def test_a_dropped_connection_fails_a_read_as_unavailable(database: Database) -> None:
    edges = PostgresEdgeStore(database)
    await edges.depart("edge-db", "default", "maintenance")
    await drop_connection(database)

    with pytest.raises(Unavailable) as caught:
        await edges.page(None, "", 10)
    assert (caught.value.reason, caught.value.message) == ("DATABASE_UNAVAILABLE", MESSAGE)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)

    # The pool replaced the dead connection: retrying later works.
    assert [row.agent_id for row in await edges.page(None, "", 10)] == ["edge-db"]


async def test_a_dropped_connection_fails_a_batch_as_unavailable_and_keeps_nothing(database: Database) -> None:
    ledger = PostgresBatchLedger(database)
    applied: list[str] = []

    async def apply(transaction: Transaction) -> Applied:
        applied.append("applied")
        return Applied(1)

    meta = _meta(1)
    await drop_connection(database)
    with pytest.raises(Unavailable) as caught:
        await ledger.run(meta, "default", apply)
    assert (caught.value.reason, caught.value.message) == ("DATABASE_UNAVAILABLE", MESSAGE)
    assert applied == []
    assert await ledger.checkpoints("edge-db") == {}

    # The edge sends the same batch again: it is applied now, once (not answered as a DUPLICATE).
    ack = await ledger.run(meta, "default", apply)
    assert (ack.status, ack.processed, ack.checkpoint) == (AckStatus.ACCEPTED, 1, 1)
    assert applied == ["applied"]
