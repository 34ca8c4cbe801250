"""A busy central sheds batches at once with RESOURCE_EXHAUSTED and a delay, instead of queueing them on the pool.

Against the real embedded PostgreSQL and a real gRPC channel: central is given
one write turn (``sync.ingestConcurrency: 1``) and a short ``sync.ingestWait``.
A session batch takes the turn and is held inside PostgreSQL (its table is
locked from another connection, as a slow disk or a long migration would).
While it is held:

* another edge's batch is answered RESOURCE_EXHAUSTED with ``ErrorInfo``
  ``INGEST_BUSY`` and a ``RetryInfo`` of one to two waits, and is not written;
* the edge's own client (``GrpcCentral``) reports that as ``ResourceExhausted``
  carrying central's delay, which its sync engine waits at least;
* the refusal is counted in ``aeterna_central_ingest_busy_total``.

Once the lock goes, the held batch is acknowledged, and the refused one, sent
again, is applied: nothing was lost and nothing was written twice.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from aeterna.sync.v1 import sync_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import ResourceExhausted
from central_svc.metrics import CentralMetrics
from edge_svc.api.central_client import GrpcCentral
from edge_svc.deps import central_link
from edge_svc.records import Channel, DecisionRecord, OutboxBatch
from tests.central.conftest import Central, Edge, StartCentral, make_session
from tests.edge.conftest import edge_document

WAIT_SECONDS = 0.3


async def held_in_flight(central: Central, count: int) -> None:
    """Until ``count`` batches hold a write turn (polled; the lock keeps them there)."""
    for _ in range(500):
        if central.deps.ingest_gate.in_flight == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{central.deps.ingest_gate.in_flight} batches in flight, expected {count}")


def status_details(error: aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo]:
    status = rpc_status.from_call(error)
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert any(d.Unpack(retry) for d in status.details)
    return info, retry


@pytest.fixture
async def busy_central(start_central: StartCentral) -> Central:
    return await start_central(**{"sync.ingestConcurrency": 1, "sync.ingestWait": f"{int(WAIT_SECONDS * 1000)}ms"})


async def test_a_batch_without_a_write_turn_is_refused_with_a_delay_and_applied_when_sent_again(
    busy_central: Central,
) -> None:
    central = busy_central
    registry = CollectorRegistry()
    CentralMetrics(registry, central.deps)  # not started: the gate's numbers are read at scrape time
    first, second = Edge("edge-gate-1"), Edge("edge-gate-2")
    held_request = first.sessions([make_session("s-held")])
    refused_request = second.sessions([make_session("s-refused")])

    with psycopg.connect(central.deps.database.conninfo) as locker:
        locker.execute("LOCK TABLE session_memory IN ACCESS EXCLUSIVE MODE")
        held = asyncio.create_task(central.send_sessions(first, held_request))
        await held_in_flight(central, 1)

        # With a deadline: without the gate this batch would wait on the lock as well.
        call = central.sync.SyncSessions(iter([refused_request]), metadata=second.metadata, timeout=10)
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
        error = caught.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "was not written" in (error.details() or "")
        info, retry = status_details(error)
        assert info.reason == "INGEST_BUSY"
        delay = retry.retry_delay.ToTimedelta().total_seconds()
        assert WAIT_SECONDS <= delay <= 2 * WAIT_SECONDS
        assert registry.get_sample_value("aeterna_central_ingest_busy_total") == 1.0
        assert registry.get_sample_value("aeterna_central_ingest_in_flight") == 1.0
        assert not held.done()
        locker.rollback()

    [held_ack] = await held
    assert held_ack.status == sync_pb2.ACK_STATUS_ACCEPTED
    with pytest.raises(aio.AioRpcError) as missing:
        await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s-refused"), metadata=second.metadata)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    # The edge keeps the refused batch and sends it again (re-signed, the same sequence): applied once.
    [ack] = await central.send_sessions(second, second.sessions([make_session("s-refused")], sequence=1))
    assert (ack.status, ack.processed) == (sync_pb2.ACK_STATUS_ACCEPTED, 1)
    reply = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s-refused"), metadata=second.metadata)
    assert reply.session.session_id == "s-refused"
    assert central.deps.ingest_gate.in_flight == central.deps.ingest_gate.waiting == 0


async def test_the_edge_client_reports_a_busy_central_with_its_delay(busy_central: Central, tmp_path: Path) -> None:
    """``GrpcCentral.send`` (the edge's adapter) raises ``ResourceExhausted`` with central's RetryInfo delay."""
    central = busy_central
    config = AeternaConfig.model_validate(
        edge_document(tmp_path / "edge", central.port, **{"sync.signing.key": DEVELOPMENT_KEY.decode()})
    )
    client = GrpcCentral(central_link(config), incarnation_id="inc-gate")
    decision = DecisionRecord("d-gate-1", 1_700_000_000_000_000_000, 'User::"a"', "read", 'Doc::"x"', True, 1)
    batch = OutboxBatch(Channel.DECISIONS, 1, str(uuid.uuid4()), 0.0, [decision.to_json()])
    blocker = Edge("edge-gate-blocker")
    try:
        with psycopg.connect(central.deps.database.conninfo) as locker:
            locker.execute("LOCK TABLE session_memory IN ACCESS EXCLUSIVE MODE")
            held = asyncio.create_task(central.send_sessions(blocker, blocker.sessions([make_session("s-block")])))
            await held_in_flight(central, 1)
            with pytest.raises(ResourceExhausted) as caught:
                await client.send(Channel.DECISIONS, [batch])
            assert caught.value.reason == "INGEST_BUSY"
            assert WAIT_SECONDS <= caught.value.retry_after <= 2 * WAIT_SECONDS
            locker.rollback()
        await held
        [ack] = await client.send(Channel.DECISIONS, [batch])
        assert (ack.sequence, ack.processed, ack.failed) == (1, 1, 0)
    finally:
        await client.close()
