"""Session sync over a real gRPC channel into a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from aeterna.sync.v1 import sync_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aeterna_shared.wire.canonical import sign_batch
from central_svc.batches import advance_checkpoint
from central_svc.store.urls import psycopg_conninfo
from tests.central.conftest import Central, Edge, make_session, now_stamp


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


def stored(url: str) -> dict[str, tuple[str, str, datetime]]:
    with psycopg.connect(psycopg_conninfo(url)) as connection:
        rows = connection.execute(
            "SELECT session_id, tenant_id, agent_id, last_activity FROM session_memory"
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def test_batch_is_applied_and_acked(central: Central) -> None:
    edge = Edge("edge-a")
    [ack] = await central.send_sessions(edge, edge.sessions([make_session("s1"), make_session("s2")]))
    assert ack.status == sync_pb2.ACK_STATUS_ACCEPTED
    assert (ack.processed, ack.failed, ack.checkpoint) == (2, 0, 1)
    assert ack.next_sync_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    rows = stored(central.config.postgresql.url or "")
    assert set(rows) == {"s1", "s2"}
    assert rows["s1"][:2] == ("default", "edge-a")


async def test_resend_is_applied_once_and_acked_identically(central: Central) -> None:
    edge = Edge("edge-a")
    request = edge.sessions([make_session("s1")])
    [first] = await central.send_sessions(edge, request)
    # A resend after a lost ack is re-signed with a fresh sent_time: still the same batch.
    request.header.sent_time.CopyFrom(now_stamp())
    sign_batch(request, edge.key)
    [second] = await central.send_sessions(edge, request)
    assert second.status == sync_pb2.ACK_STATUS_DUPLICATE
    assert (second.batch_id, second.processed, second.failed, second.checkpoint) == (
        first.batch_id,
        first.processed,
        first.failed,
        first.checkpoint,
    )


async def test_batch_id_reused_with_other_content_is_refused(central: Central) -> None:
    edge = Edge("edge-a")
    request = edge.sessions([make_session("s1")])
    await central.send_sessions(edge, request)
    other = edge.sessions([make_session("s2")])
    other.header.batch_id = request.header.batch_id
    sign_batch(other, edge.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.send_sessions(edge, other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(caught.value) == "BATCH_ID_REUSED"
    assert set(stored(central.config.postgresql.url or "")) == {"s1"}


async def test_out_of_order_batches_checkpoint_catches_up(central: Central) -> None:
    edge = Edge("edge-a")
    third = edge.sessions([make_session("s3")], sequence=3)
    second = edge.sessions([make_session("s2")], sequence=2)
    first = edge.sessions([make_session("s1")], sequence=1)
    acks = await central.send_sessions(edge, third, first, second)
    assert [a.checkpoint for a in acks] == [0, 1, 3]
    assert all(a.status == sync_pb2.ACK_STATUS_ACCEPTED for a in acks)
    checkpoint = await central.sync.GetSyncCheckpoint(sync_pb2.GetSyncCheckpointRequest(), metadata=edge.metadata)
    assert [(c.channel, c.sequence) for c in checkpoint.checkpoints] == [(sync_pb2.SYNC_CHANNEL_SESSIONS, 3)]


async def test_one_bad_session_fails_alone(central: Central) -> None:
    edge = Edge("edge-a")
    bad = make_session("bad")
    bad.messages[0].content = "changed after the checksum"
    [ack] = await central.send_sessions(edge, edge.sessions([make_session("good1"), bad, make_session("good2")]))
    assert ack.status == sync_pb2.ACK_STATUS_PARTIAL
    assert (ack.processed, ack.failed) == (2, 1)
    assert [(f.item_id, f.reason) for f in ack.failures] == [("bad", "CHECKSUM_MISMATCH")]
    assert set(stored(central.config.postgresql.url or "")) == {"good1", "good2"}


async def test_newer_last_activity_wins(central: Central) -> None:
    edge = Edge("edge-a")
    now = datetime.now(UTC)
    await central.send_sessions(edge, edge.sessions([make_session("s1", activity=now, text="new")]))
    await central.send_sessions(
        edge, edge.sessions([make_session("s1", activity=now - timedelta(minutes=1), text="old")])
    )
    response = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s1"), metadata=edge.metadata)
    assert response.session.messages[0].content == "new"
    assert response.agent_id == "edge-a"


async def test_other_tenants_session_is_neither_overwritten_nor_readable(central: Central) -> None:
    owner, intruder = Edge("edge-a", tenant_id="t1"), Edge("edge-b", tenant_id="t2")
    await central.send_sessions(owner, owner.sessions([make_session("s1", text="mine")]))
    [ack] = await central.send_sessions(intruder, intruder.sessions([make_session("s1", text="stolen")]))
    assert [(f.item_id, f.reason) for f in ack.failures] == [("s1", "SESSION_OWNED_BY_OTHER_TENANT")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s1"), metadata=intruder.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    own = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s1"), metadata=owner.metadata)
    assert own.session.messages[0].content == "mine"


async def test_tampered_signature_is_unauthenticated(central: Central) -> None:
    edge = Edge("edge-a")
    request = edge.sessions([make_session("s1")])
    request.sessions[0].user_id = "someone-else"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.send_sessions(edge, request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == "BAD_SIGNATURE"
    assert stored(central.config.postgresql.url or "") == {}


async def test_stale_sent_time_is_unauthenticated(central: Central) -> None:
    edge = Edge("edge-a")
    request = edge.sessions([make_session("s1")])
    request.header.sent_time.CopyFrom(now_stamp(datetime.now(UTC) - timedelta(hours=1)))
    sign_batch(request, edge.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.send_sessions(edge, request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == "STALE_BATCH"


async def test_batch_for_another_agent_is_permission_denied(central: Central) -> None:
    edge, liar = Edge("edge-a"), Edge("edge-b")
    request = liar.sessions([make_session("s1")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.send_sessions(edge, request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_edge_registry_lists_the_syncing_edge(central: Central) -> None:
    edge = Edge("edge-a")
    await central.send_sessions(edge, edge.sessions([make_session("s1")]))
    listed = await central.sync.ListEdges(sync_pb2.ListEdgesRequest(), metadata=edge.metadata)
    assert [(e.agent_id, e.region, e.state) for e in listed.edges] == [
        ("edge-a", "us-west-2", sync_pb2.EDGE_STATE_ONLINE)
    ]
    await central.sync.AnnounceOffline(sync_pb2.AnnounceOfflineRequest(reason="shutdown"), metadata=edge.metadata)
    listed = await central.sync.ListEdges(sync_pb2.ListEdgesRequest(), metadata=edge.metadata)
    assert listed.edges[0].state == sync_pb2.EDGE_STATE_DEPARTED


@pytest.mark.parametrize(
    ("contiguous", "above", "sequence", "floor", "expected"),
    [
        (2, [4, 5], 3, 0, (5, [])),
        (2, [], 4, 0, (2, [4])),
        # The edge dead-lettered 3..5 and now holds nothing below 6: the gap is closed.
        (2, [6], 7, 6, (7, [])),
        # A floor below the checkpoint changes nothing.
        (5, [], 7, 3, (5, [7])),
    ],
)
def test_checkpoint_advances_past_dead_lettered_gaps(
    contiguous: int, above: list[int], sequence: int, floor: int, expected: tuple[int, list[int]]
) -> None:
    assert advance_checkpoint(contiguous, above, sequence, floor) == expected
