"""The edge's local parts against real components: Redis, SQLite outbox, Qdrant Edge, cedarpy."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import redis
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from google.protobuf import struct_pb2
from grpc import aio

from aeterna_shared.errors import InvalidArgument
from edge_svc.deps import EdgeDeps
from edge_svc.memory import WorkingMemory, session_key
from edge_svc.policy import NO_BUNDLE_ERROR, CedarAgent
from edge_svc.records import Channel, Message, PolicyBundleRecord, SessionRecord, VectorRecord, now_ns
from edge_svc.store.bundle_file import BundleFile
from edge_svc.store.outbox import ChannelLimits, SqliteOutbox
from tests.edge.conftest import BUNDLE_POLICY, DIMENSION

TENANT = "default"


def bundle(version: int, text: str = BUNDLE_POLICY) -> PolicyBundleRecord:
    return PolicyBundleRecord(version=version, policies=(("approve.cedar", text),))


async def test_working_memory_round_trip_and_expiry(offline_edge: EdgeDeps) -> None:
    working = offline_edge.node.working
    await working.set(TENANT, "k", {"a": [1, 2]}, None)
    assert await working.get(TENANT, "k") == (True, {"a": [1, 2]})
    # A different tenant's key space is separate.
    assert await working.get("other", "k") == (False, None)
    await working.set(TENANT, "short", "v", timedelta(milliseconds=30))
    for _ in range(200):
        found, _ = await working.get(TENANT, "short")
        if not found:
            break
        await asyncio.sleep(0.01)
    assert not found


async def test_session_collector_moves_dirty_sessions_into_the_outbox(offline_edge: EdgeDeps) -> None:
    node = offline_edge.node
    for index in range(3):
        await node.sessions.put(TENANT, SessionRecord(f"s{index}", "u", [Message("user", f"hi {index}")]))
    assert await node.sessions.dirty_count(TENANT) == 3
    queued = await node.sync.collect_sessions()
    assert queued == 3
    assert await node.sessions.dirty_count(TENANT) == 0
    [batch] = node.outbox.pending(Channel.SESSIONS, 10)
    assert sorted(item["id"] for item in batch.items) == ["s0", "s1", "s2"]
    assert batch.sequence == 1


async def test_a_write_during_collection_stays_dirty(offline_edge: EdgeDeps) -> None:
    sessions = offline_edge.node.sessions
    await sessions.put(TENANT, SessionRecord("s", "u"))
    read = await sessions.dirty(TENANT, 10)
    await sessions.append(TENANT, session_id="s", user_id="u", messages=[Message("user", "later")], state_patch={})
    assert await sessions.clear(TENANT, read.versions) == 0
    assert await sessions.dirty_count(TENANT) == 1


async def test_a_dirty_session_the_store_lost_is_a_counted_dead_letter(offline_edge: EdgeDeps, redis_url: str) -> None:
    """Cannot happen with a store that keeps what it took; when it does (a store restarted without its
    file, a key deleted by hand) the loss is counted and kept as a dead letter, not only logged."""
    node = offline_edge.node
    await node.sessions.put(TENANT, SessionRecord("kept", "u", [Message("user", "a")]))
    await node.sessions.put(TENANT, SessionRecord("gone", "u", [Message("user", "b")]))
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.delete(session_key(TENANT, "gone")) == 1
    finally:
        client.close()
    assert await node.sync.collect_sessions() == 1
    stats = {s.channel: s for s in node.outbox.stats()}
    assert stats[Channel.SESSIONS].dead_letters == 1
    assert [reason for _, _, reason, _ in offline_edge.local.outbox.dead_letters(Channel.SESSIONS)] == [
        "session missing from the session store"
    ]
    assert await node.sessions.dirty_count(TENANT) == 0


async def test_unsynced_sessions_keep_no_ttl_until_central_acknowledged(offline_edge: EdgeDeps, redis_url: str) -> None:
    node = offline_edge.node
    await node.sessions.put(TENANT, SessionRecord("s", "u", [Message("user", "a")]))
    await node.sync.collect_sessions()
    client = redis.Redis.from_url(redis_url)
    try:
        # Collected into the outbox, not yet acknowledged: still no TTL, so it can be neither
        # evicted (volatile-lru) nor expire while the edge is offline.
        assert client.pttl(session_key(TENANT, "s")) == -1
        [batch] = node.outbox.pending(Channel.SESSIONS, 10)
        assert await node.sessions.release(TENANT, batch.items) == 1
        assert client.pttl(session_key(TENANT, "s")) > 0
    finally:
        client.close()


async def test_working_memory_ttl_beyond_the_spec_range_is_refused_or_capped(offline_edge: EdgeDeps) -> None:
    working = offline_edge.node.working
    assert working.max_ttl == timedelta(seconds=5)
    with pytest.raises(InvalidArgument) as refused:
        await working.set(TENANT, "k", 1, timedelta(seconds=30))
    assert refused.value.message.startswith("ttl: ")
    assert "cache.layers.working.maxTtl" in refused.value.message
    capped = WorkingMemory(working.cache, timedelta(seconds=2), timedelta(seconds=5), cap_ttl=True)
    expires = await capped.set(TENANT, "k", 1, timedelta(hours=1))
    assert expires - now_ns() <= 5_000_000_000


def test_outbox_survives_reopen_and_keeps_sequences(tmp_path: Path) -> None:
    limits = {c: ChannelLimits(100, 3600) for c in Channel}
    outbox = SqliteOutbox(tmp_path / "o.db", limits)
    first = outbox.enqueue(Channel.DECISIONS, [{"id": "a"}])
    outbox.enqueue(Channel.DECISIONS, [{"id": "b"}])
    outbox.close()
    reopened = SqliteOutbox(tmp_path / "o.db", limits)
    assert [b.items[0]["id"] for b in reopened.pending(Channel.DECISIONS, 10)] == ["a", "b"]
    assert reopened.enqueue(Channel.DECISIONS, [{"id": "c"}]).sequence == 3
    assert reopened.ack(Channel.DECISIONS, [first.sequence]) == 1
    assert [b.sequence for b in reopened.pending(Channel.DECISIONS, 10)] == [2, 3]
    # A checkpoint drops everything at or below it.
    assert reopened.ack(Channel.DECISIONS, [], checkpoint=2) == 1
    assert [b.sequence for b in reopened.pending(Channel.DECISIONS, 10)] == [3]


def test_outbox_overflow_and_expiry_go_to_dead_letters(tmp_path: Path) -> None:
    limits = {c: ChannelLimits(3, 3600) for c in Channel}
    limits[Channel.EPISODES] = ChannelLimits(100, 0)
    outbox = SqliteOutbox(tmp_path / "o.db", limits)
    for index in range(5):
        outbox.enqueue(Channel.SESSIONS, [{"id": index}])
    assert [b.items[0]["id"] for b in outbox.pending(Channel.SESSIONS, 10)] == [2, 3, 4]
    outbox.enqueue(Channel.EPISODES, [{"id": "old"}])
    assert outbox.expire() == 1
    stats = {s.channel: s for s in outbox.stats()}
    assert stats[Channel.SESSIONS].dead_letters == 2
    assert stats[Channel.EPISODES].dead_letters == 1
    assert [reason for _, _, reason, _ in outbox.dead_letters(Channel.SESSIONS)] == ["overflow", "overflow"]
    assert outbox.dead_letters(Channel.EPISODES)[0][2] == "expired"


async def test_cedar_agent_denies_without_bundle_then_decides_and_persists(offline_edge: EdgeDeps) -> None:
    node = offline_edge.node
    verdict = await node.agent.authorize('User::"alice"', 'Action::"approve"', 'Doc::"d"', {}, "")
    assert not verdict.allowed
    assert verdict.errors == [NO_BUNDLE_ERROR]
    assert node.agent.apply(bundle(1))
    allowed = await node.agent.authorize('User::"alice"', 'Action::"approve"', 'Doc::"d"', {"risk": 1}, "")
    assert allowed.allowed
    assert allowed.reasons == ["approve.cedar#0"]
    assert allowed.offline
    denied = await node.agent.authorize('User::"alice"', 'Action::"approve"', 'Doc::"d"', {"risk": 9}, "")
    assert not denied.allowed
    assert denied.reasons == ["approve.cedar#1"]
    # An older or invalid bundle never replaces the current one.
    assert not node.agent.apply(bundle(1, "permit(principal, action, resource);"))
    assert not node.agent.apply(bundle(2, "permit("))
    assert node.agent.version == 1
    # Every decision was durably recorded for replay before its answer was returned (journaled, in the
    # default decisionDurability: process), and moves into batches in the order it was decided.
    assert {s.channel: s.pending_items for s in node.outbox.stats()}[Channel.DECISIONS] == 3
    await node.sync.move_decisions()
    recorded = [item["allow"] for batch in node.outbox.pending(Channel.DECISIONS, 10) for item in batch.items]
    assert recorded == [False, True, False]
    # A fresh agent over the same data directory decides with the persisted bundle.
    fresh = CedarAgent(BundleFile(Path(node.settings.edge.data_dir) / "policy" / "bundle.json"), node.sync, node.link)
    assert fresh.version == 1
    assert (await fresh.authorize('User::"alice"', 'Action::"approve"', 'Doc::"d"', {}, "")).allowed


async def test_vectors_local_search_offline_is_partial(offline_edge: EdgeDeps) -> None:
    vectors = offline_edge.node.vectors
    records = [VectorRecord(f"v{i}", [float(i == j) + 0.01 for j in range(DIMENSION)]) for i in range(DIMENSION)]
    assert await vectors.upsert(TENANT, records) == DIMENSION
    result = await vectors.search([1.0] + [0.0] * (DIMENSION - 1), 3, 0.0)
    assert result.hits[0].vector.vector_id == "v0"
    assert result.local_count == 3
    assert not result.partial
    short = await vectors.search([1.0] + [0.0] * (DIMENSION - 1), 3, 0.99)
    assert short.partial
    assert [h.vector.vector_id for h in short.hits] == ["v0"]
    [batch] = offline_edge.node.outbox.pending(Channel.VECTORS, 10)
    assert len(batch.items) == DIMENSION


def _code(error: aio.AioRpcError) -> grpc.StatusCode:
    return error.code()


@pytest.mark.parametrize(
    ("method", "request_message", "fragment"),
    [
        ("GetSession", edge_pb2.GetSessionRequest(), "session_id"),
        ("SetWorkingMemory", edge_pb2.SetWorkingMemoryRequest(key=""), "key"),
        ("SearchVectors", edge_pb2.SearchVectorsRequest(embedding=[1.0] * 3, limit=1), "dimension"),
        ("SearchVectors", edge_pb2.SearchVectorsRequest(embedding=[1.0] * DIMENSION, limit=-1), "limit"),
        ("SearchVectors", edge_pb2.SearchVectorsRequest(embedding=[math.nan] * DIMENSION, limit=1), "NaN"),
        (
            "UpsertVectors",
            edge_pb2.UpsertVectorsRequest(vectors=[memory_pb2.Vector(values=[1.0] * DIMENSION)]),
            "vector_id",
        ),
        ("Authorize", edge_pb2.AuthorizeRequest(principal="", action='Action::"a"', resource='R::"r"'), "principal"),
        ("PutSession", edge_pb2.PutSessionRequest(), "session"),
        (
            "Authorize",
            edge_pb2.AuthorizeRequest(
                principal='User::"a"',
                action='Action::"b"',
                resource='R::"c"',
                context=struct_pb2.Struct(fields={"risk": struct_pb2.Value(number_value=1.5)}),
            ),
            "context.risk",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub, method: str, request_message: object, fragment: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await getattr(edge_stub, method)(request_message)
    assert _code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (caught.value.details() or "")


async def test_grpc_surface_offline(edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub) -> None:
    put = await edge_stub.PutSession(
        edge_pb2.PutSessionRequest(
            session=memory_pb2.Session(
                session_id="s1", user_id="u", messages=[memory_pb2.SessionMessage(role="user", content="hello")]
            )
        )
    )
    assert len(put.session.checksum) == 64
    got = await edge_stub.GetSession(edge_pb2.GetSessionRequest(session_id="s1"))
    assert got.source == edge_pb2.SESSION_SOURCE_LOCAL
    assert got.session.checksum == put.session.checksum
    with pytest.raises(aio.AioRpcError) as caught:
        await edge_stub.GetSession(edge_pb2.GetSessionRequest(session_id="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "offline" in (caught.value.details() or "")
    with pytest.raises(aio.AioRpcError) as flush:
        await edge_stub.FlushSync(edge_pb2.FlushSyncRequest())
    assert flush.value.code() == grpc.StatusCode.UNAVAILABLE
    value = struct_pb2.Value(string_value="x")
    await edge_stub.SetWorkingMemory(edge_pb2.SetWorkingMemoryRequest(key="k", value=value))
    assert (await edge_stub.GetWorkingMemory(edge_pb2.GetWorkingMemoryRequest(key="k"))).value.string_value == "x"
    denied = await edge_stub.Authorize(
        edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"b"', resource='R::"c"')
    )
    assert denied.effect == decision_pb2.EFFECT_DENY
    assert denied.offline
    status = await edge_stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    assert status.link_state == edge_pb2.LINK_STATE_OFFLINE
    assert status.local_sessions == 1
    assert {q.channel for q in status.queues} == {1, 2, 3, 4}


async def test_numbers_in_an_authorize_context_reach_cedar_as_integers(
    offline_edge: EdgeDeps, edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub
) -> None:
    """Struct carries numbers as doubles; Cedar compares Longs. A whole number must decide like an int."""
    assert offline_edge.node.agent.apply(bundle(1))
    decisions = {}
    for risk in (1, 9):
        request = edge_pb2.AuthorizeRequest(principal='User::"alice"', action='Action::"approve"', resource='Doc::"d"')
        request.context.update({"risk": risk})
        reply = await edge_stub.Authorize(request)
        assert not reply.errors
        decisions[risk] = reply.effect
    assert decisions == {1: decision_pb2.EFFECT_ALLOW, 9: decision_pb2.EFFECT_DENY}
