"""Central's batch paths as made fast: read-ahead on the session stream, the pipelined ledger, replay under locks.

Each test drives the real central (in process, real PostgreSQL, real gRPC) and
checks what an edge would see: the acks and errors in order, what is stored,
and that a dropped database connection still keeps nothing of a pipelined
batch. No timings are asserted.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.errors import Unavailable
from aeterna_shared.wire.canonical import session_checksum, sign_batch
from central_svc.api.sync import encoded_with_checksum
from central_svc.batches import AckStatus, BatchMeta, Channel
from central_svc.ports import Applied, Transaction
from central_svc.store.database import Database
from central_svc.store.ledger import PostgresBatchLedger
from central_svc.store.urls import psycopg_conninfo
from tests.central.conftest import Central, Edge, make_session, now_stamp
from tests.central.test_sessions import reason_of, stored


@pytest.mark.parametrize("tenant", ["", "t1"])
@pytest.mark.parametrize("with_checksum", [False, True])
def test_encoding_and_checksum_match_the_shared_definition(tenant: str, with_checksum: bool) -> None:
    """One serialization for the stored bytes, the canonical checksum as ``session_checksum`` defines it."""
    session = make_session("s1", text="héllo")
    session.state.update({"nested": {"k": [1, "two", None]}})
    session.tenant_id = tenant
    if not with_checksum:
        session.checksum = ""
    before = session.SerializeToString(deterministic=True)
    data, checksum = encoded_with_checksum(session)
    assert data == before
    assert checksum == session_checksum(session)
    assert session.SerializeToString(deterministic=True) == before  # the request's item is left as it was

    append = sync_pb2.SessionAppend(session_id="s1", messages=[memory_pb2.SessionMessage(message_id="m1")])
    append.tenant_id = tenant
    append.checksum = session_checksum(append) if with_checksum else ""
    assert encoded_with_checksum(append) == (append.SerializeToString(deterministic=True), session_checksum(append))


async def test_a_refused_batch_ends_the_stream_after_the_batches_before_it(central: Central) -> None:
    """Batch 2 (bad signature) is read ahead while batch 1 is written: 1 is acked and kept, 3 is never applied."""
    edge = Edge("edge-ahead")
    first = edge.sessions([make_session("s1")])
    tampered = edge.sessions([make_session("s2")])
    tampered.sessions[0].user_id = "someone-else"
    third = edge.sessions([make_session("s3")])
    acks: list[sync_pb2.BatchAck] = []

    async def stream() -> None:
        call = central.sync.SyncSessions(iter([first, tampered, third]), metadata=edge.metadata)
        async for response in call:  # the acks before the error are kept
            acks.append(response.ack)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream()
    assert [(a.batch_id, a.status, a.checkpoint) for a in acks] == [
        (first.header.batch_id, sync_pb2.ACK_STATUS_ACCEPTED, 1)
    ]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == "BAD_SIGNATURE"
    assert set(stored(central.config.postgresql.url or "")) == {"s1"}


async def test_many_batches_on_one_stream_are_acked_in_order(central: Central) -> None:
    """Read-ahead keeps the order: every ack answers its batch, checkpoints count up, the newest version wins."""
    edge = Edge("edge-order")
    base = datetime.now(UTC) - timedelta(minutes=5)
    requests = [
        edge.sessions([make_session(f"s{n % 3}", activity=base + timedelta(seconds=n), text=f"v{n}")])
        for n in range(12)
    ]
    acks = await central.send_sessions(edge, *requests)
    assert [a.batch_id for a in acks] == [r.header.batch_id for r in requests]
    assert [a.checkpoint for a in acks] == list(range(1, 13))
    for session_id, text in (("s0", "v9"), ("s1", "v10"), ("s2", "v11")):
        got = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id=session_id), metadata=edge.metadata)
        assert got.session.messages[0].content == text


async def test_a_pipelined_batch_on_a_dropped_connection_is_unavailable_and_keeps_nothing(database_url: str) -> None:
    """The connection's backend dies before the batch: UNAVAILABLE, nothing applied, the resend is applied once."""
    database = Database(database_url, max_size=1)
    await database.open()
    try:
        ledger = PostgresBatchLedger(database)
        applied: list[str] = []

        async def apply(transaction: Transaction) -> Applied:
            applied.append("applied")
            return Applied(1)

        batch_id = str(uuid.uuid4())
        meta = BatchMeta(
            batch_id=batch_id,
            sequence=1,
            agent_id="edge-pipelined",
            region="r",
            sent_time=datetime.now(UTC),
            channel=Channel.SESSIONS,
            digest=batch_id.encode(),
        )
        async with database.connection() as connection:
            pid = connection.info.backend_pid
        with psycopg.connect(database.conninfo, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
        with pytest.raises(Unavailable) as caught:
            await ledger.run(meta, "default", apply, pipelined=True)
        assert caught.value.reason == "DATABASE_UNAVAILABLE"
        assert applied == []
        ack = await ledger.run(meta, "default", apply, pipelined=True)
        assert (ack.status, ack.processed, ack.checkpoint) == (AckStatus.ACCEPTED, 1, 1)
        again = await ledger.run(meta, "default", apply, pipelined=True)
        assert (again.status, again.processed, again.checkpoint) == (AckStatus.DUPLICATE, 1, 1)
        assert applied == ["applied"]
    finally:
        await database.close()


def _decision(decision_id: str, resource: str, at: datetime) -> decision_pb2.Decision:
    return decision_pb2.Decision(
        decision_id=decision_id,
        decide_time=now_stamp(at),
        principal='User::"u"',
        action='Action::"a"',
        resource=resource,
        effect=decision_pb2.EFFECT_ALLOW,
    )


async def test_one_decision_in_two_concurrent_batches_is_stored_once(central: Central) -> None:
    """The log is read under the resources' locks: of two batches racing with one decision id, one applies it."""
    edge = Edge("edge-race")
    at = datetime.now(UTC) - timedelta(minutes=1)

    async def send(*decisions: decision_pb2.Decision) -> sync_pb2.ReplayDecisionsResponse:
        request = sync_pb2.ReplayDecisionsRequest(header=edge.header("decisions"), decisions=decisions)
        sign_batch(request, edge.key)
        response: sync_pb2.ReplayDecisionsResponse = await central.sync.ReplayDecisions(request, metadata=edge.metadata)
        return response

    shared = _decision("d-shared", "res-1", at)
    responses = await asyncio.gather(
        send(shared, _decision("d-a", "res-2", at)), send(shared, _decision("d-b", "res-3", at))
    )
    outcomes = sorted(r.outcome for response in responses for r in response.results if r.decision_id == "d-shared")
    assert outcomes == [sync_pb2.REPLAY_OUTCOME_APPLIED, sync_pb2.REPLAY_OUTCOME_DUPLICATE]
    with psycopg.connect(psycopg_conninfo(central.config.postgresql.url or "")) as connection:
        rows = connection.execute(
            "SELECT resource, status FROM decisions WHERE decision_id IN ('d-shared', 'd-a', 'd-b') ORDER BY resource"
        ).fetchall()
    assert rows == [("res-1", "effective"), ("res-2", "effective"), ("res-3", "effective")]
