"""Edge incarnations at central: checkpoints and the ledger per (agent id, incarnation, channel),
the registry's incarnation fields, and the 0002 migration on a database that already holds rows."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from aeterna.sync.v1 import sync_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from aeterna_shared.wire.canonical import sign_batch
from central_svc.batches import AckStatus, BatchMeta, Channel
from central_svc.ports import Applied, Apply, BatchLedger, Transaction
from central_svc.store.embedded_postgres import EmbeddedPostgres
from central_svc.store.migrate import upgrade
from central_svc.store.urls import psycopg_conninfo
from tests.central.conftest import Central, Edge, StartCentral, make_session, now_stamp
from tests.support.postgres import TEST_VECTOR_DIMENSION

OLD = "7d5c1a8e-0b1f-4f57-9d55-3c5b8f3e2a10"
NEW = "c2f0e6a4-5a0e-4a57-8f1e-9d4b6a7c1b22"


def _reason(error: aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


def _meta(agent: str, incarnation: str, sequence: int, batch_id: str | None = None) -> BatchMeta:
    batch_id = batch_id or str(uuid.uuid4())
    return BatchMeta(
        batch_id=batch_id,
        sequence=sequence,
        agent_id=agent,
        region="r",
        sent_time=datetime.now(UTC),
        channel=Channel.DECISIONS,
        digest=batch_id.encode(),
        incarnation_id=incarnation,
    )


async def test_ledger_same_sequence_under_two_incarnations_is_applied_twice(central: Central) -> None:
    """The ledger itself: sequence 1 of two incarnations is two batches; a resend is still DUPLICATE."""
    ledger: BatchLedger = central.deps.ledger
    applied: list[str] = []

    def applying(name: str) -> Apply:
        async def apply(transaction: Transaction) -> Applied:
            applied.append(name)
            return Applied(1)

        return apply

    old, new = _meta("edge-l", OLD, 1), _meta("edge-l", NEW, 1)
    first = await ledger.run(old, "default", applying("old"))
    second = await ledger.run(new, "default", applying("new"))
    assert (first.status, first.checkpoint) == (AckStatus.ACCEPTED, 1)
    assert (second.status, second.checkpoint) == (AckStatus.ACCEPTED, 1)
    resent = await ledger.run(new, "default", applying("new again"))
    assert (resent.status, resent.processed, resent.checkpoint) == (AckStatus.DUPLICATE, 1, 1)
    assert applied == ["old", "new"]
    # Each incarnation has its own checkpoint; the empty (pre-incarnation) one has none.
    assert await ledger.checkpoints("edge-l", OLD) == {int(Channel.DECISIONS): 1}
    assert await ledger.checkpoints("edge-l", NEW) == {int(Channel.DECISIONS): 1}
    assert await ledger.checkpoints("edge-l") == {}


def _sessions(edge: Edge, incarnation: str, sequence: int, *session_ids: str) -> sync_pb2.SyncSessionsRequest:
    header = edge.header("sessions", sequence=sequence)
    header.incarnation_id = incarnation
    request = sync_pb2.SyncSessionsRequest(header=header, sessions=[make_session(s) for s in session_ids])
    sign_batch(request, edge.key)
    return request


async def _checkpoints(central: Central, edge: Edge, incarnation: str) -> dict[int, int]:
    reply = await central.sync.GetSyncCheckpoint(
        sync_pb2.GetSyncCheckpointRequest(incarnation_id=incarnation), metadata=edge.metadata
    )
    return {c.channel: int(c.sequence) for c in reply.checkpoints}


async def _edge_info(central: Central, agent: str) -> sync_pb2.EdgeInfo:
    reply = await central.sync.ListEdges(
        sync_pb2.ListEdgesRequest(page_size=100), metadata=(("x-aeterna-agent-id", "operator"),)
    )
    return next(e for e in reply.edges if e.agent_id == agent)


def _stored_sessions(central: Central) -> dict[str, int]:
    with psycopg.connect(psycopg_conninfo(central.config.postgresql.url or "")) as connection:
        rows = connection.execute("SELECT session_id, count(*) FROM session_memory GROUP BY session_id").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


async def test_reprovisioned_edge_starts_afresh_and_old_batches_still_apply(
    central: Central, caplog: pytest.LogCaptureFixture
) -> None:
    edge = Edge("edge-r")
    caplog.set_level(logging.WARNING, logger="central_svc.store.ledger")
    for sequence in (1, 2, 3):
        [ack] = await central.send_sessions(edge, _sessions(edge, OLD, sequence, f"old-{sequence}"))
        assert ack.status == sync_pb2.ACK_STATUS_ACCEPTED
    info = await _edge_info(central, "edge-r")
    assert (info.incarnation_id, info.incarnation_count) == (OLD, 1)
    assert not [r for r in caplog.records if "re-provisioned" in r.getMessage()]

    # Re-provisioned: the same agent id, a new incarnation, sequences from 1 again.
    [ack] = await central.send_sessions(edge, request := _sessions(edge, NEW, 1, "new-1"))
    assert (ack.status, ack.checkpoint) == (sync_pb2.ACK_STATUS_ACCEPTED, 1)
    warnings = [r.getMessage() for r in caplog.records if "re-provisioned" in r.getMessage()]
    assert warnings == [f"edge edge-r was re-provisioned: incarnation {OLD} -> {NEW}; its checkpoints start afresh"]
    assert [r.levelno for r in caplog.records if "re-provisioned" in r.getMessage()] == [logging.WARNING]
    info = await _edge_info(central, "edge-r")
    assert (info.incarnation_id, info.incarnation_count) == (NEW, 2)
    started = info.incarnation_start_time.ToDatetime(tzinfo=UTC)
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=5)

    # The same batch resent (re-signed) is a duplicate, not a third batch.
    request.header.sent_time.CopyFrom(now_stamp())
    sign_batch(request, edge.key)
    [again] = await central.send_sessions(edge, request)
    assert (again.status, again.checkpoint) == (sync_pb2.ACK_STATUS_DUPLICATE, 1)

    # A late batch of the old incarnation (an old copy still running) is applied under its own
    # checkpoint, and does not make the old incarnation current again.
    [late] = await central.send_sessions(edge, _sessions(edge, OLD, 4, "old-4"))
    assert (late.status, late.checkpoint) == (sync_pb2.ACK_STATUS_ACCEPTED, 4)
    assert any("earlier incarnation" in r.getMessage() for r in caplog.records)
    info = await _edge_info(central, "edge-r")
    assert (info.incarnation_id, info.incarnation_count) == (NEW, 2)
    assert info.incarnation_start_time.ToDatetime(tzinfo=UTC) == started

    sessions = sync_pb2.SYNC_CHANNEL_SESSIONS
    assert await _checkpoints(central, edge, OLD) == {sessions: 4}
    assert await _checkpoints(central, edge, NEW) == {sessions: 1}
    assert await _checkpoints(central, edge, "") == {}
    assert _stored_sessions(central) == {"old-1": 1, "old-2": 1, "old-3": 1, "old-4": 1, "new-1": 1}


async def test_a_batch_id_cannot_move_to_another_incarnation(central: Central) -> None:
    edge = Edge("edge-m")
    request = _sessions(edge, OLD, 1, "s1")
    await central.send_sessions(edge, request)
    request.header.incarnation_id = NEW
    request.header.sent_time.CopyFrom(now_stamp())
    sign_batch(request, edge.key)
    with pytest.raises(aio.AioRpcError) as caught:
        await central.send_sessions(edge, request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _reason(caught.value) == "BATCH_ID_REUSED"


async def test_an_overlong_incarnation_id_is_refused(central: Central) -> None:
    edge = Edge("edge-x")
    with pytest.raises(aio.AioRpcError) as caught:
        await central.send_sessions(edge, _sessions(edge, "x" * 65, 1, "s1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(caught.value) == "BAD_INCARNATION_ID"
    with pytest.raises(aio.AioRpcError) as caught:
        await _checkpoints(central, edge, "x" * 65)
    assert _reason(caught.value) == "BAD_INCARNATION_ID"
    assert _stored_sessions(central) == {}


# --- the migration ------------------------------------------------------------------------------


@pytest.fixture
def empty_database(postgres_server: EmbeddedPostgres) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, conninfo) of an empty database of this test's own."""
    name = f"incarnations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url_for(name), postgres_server.conninfo(name)
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_migration_upgrades_a_database_with_existing_rows(
    empty_database: tuple[str, str], start_central: StartCentral
) -> None:
    url, conninfo = empty_database
    upgrade(url, vector_dimension=TEST_VECTOR_DIMENSION, revision="0001")
    first = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with psycopg.connect(conninfo) as connection:
        for sequence in (1, 2, 3):
            connection.execute(
                "INSERT INTO sync_batches (batch_id, agent_id, channel, sequence, digest, ack, created_at)"
                " VALUES (%s, 'edge-old', 1, %s, '\\x00', NULL, %s)",
                (str(uuid.uuid4()), sequence, first + timedelta(minutes=sequence)),
            )
        connection.execute("INSERT INTO sync_checkpoints (agent_id, channel, contiguous) VALUES ('edge-old', 1, 3)")
        connection.execute(
            "INSERT INTO edges (agent_id, tenant_id, region, last_sync_at) VALUES ('edge-old', 'default', 'r', now())"
        )
        connection.execute(
            "INSERT INTO edges (agent_id, tenant_id, departed_at) VALUES ('edge-gone', 'default', now())"
        )

    upgrade(url, vector_dimension=TEST_VECTOR_DIMENSION)

    with psycopg.connect(conninfo) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        assert connection.execute("SELECT DISTINCT incarnation_id FROM sync_batches").fetchall() == [("",)]
        assert connection.execute(
            "SELECT agent_id, incarnation_id, channel, contiguous FROM sync_checkpoints"
        ).fetchall() == [("edge-old", "", 1, 3)]
        edges = connection.execute(
            "SELECT agent_id, incarnation_id, incarnation_started_at, incarnation_count FROM edges ORDER BY agent_id"
        ).fetchall()
        assert edges == [("edge-gone", "", None, 0), ("edge-old", "", first + timedelta(minutes=1), 1)]
        assert connection.execute("SELECT agent_id, incarnation_id, batches FROM edge_incarnations").fetchall() == [
            ("edge-old", "", 3)
        ]

    # Central runs on the upgraded database: the pre-incarnation edge keeps its checkpoint and sequences,
    # and the same edge re-provisioned starts afresh beside it.
    central = await start_central(url)
    edge = Edge("edge-old")
    sessions = sync_pb2.SYNC_CHANNEL_SESSIONS
    assert await _checkpoints(central, edge, "") == {sessions: 3}
    [ack] = await central.send_sessions(edge, _sessions(edge, "", 4, "legacy-4"))
    assert (ack.status, ack.checkpoint) == (sync_pb2.ACK_STATUS_ACCEPTED, 4)
    [ack] = await central.send_sessions(edge, _sessions(edge, NEW, 1, "new-1"))
    assert (ack.status, ack.checkpoint) == (sync_pb2.ACK_STATUS_ACCEPTED, 1)
    info = await _edge_info(central, "edge-old")
    assert (info.incarnation_id, info.incarnation_count) == (NEW, 2)
    assert await _checkpoints(central, edge, "") == {sessions: 4}
    assert await _checkpoints(central, edge, NEW) == {sessions: 1}
