"""The edge refuses, before answering OK, what central could not store (issue 12: no poison items).

Fuzzing found the edge answering OK to sessions, episodes and decisions central
refuses (a NUL byte; a resource of a few thousand characters); central then
refused the whole batch, forever. Every write RPC now runs ``aeterna_shared.limits``
(the checks central runs per item) and answers INVALID_ARGUMENT naming the field,
with nothing queued. In-process edge on real Redis, SQLite, Qdrant Edge and cedarpy.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from grpc import aio
from grpc_status import rpc_status

from aeterna_shared import limits
from aeterna_shared.config import AeternaConfig
from edge_svc.deps import EdgeDeps, open_edge
from edge_svc.records import Channel
from edge_svc.server import create_server
from edge_svc.store.outbox import REFUSED_PREFIX, ChannelLimits, SqliteOutbox
from tests.edge.conftest import DIMENSION, closed_port, edge_document


def bad_request(error: aio.AioRpcError) -> tuple[str, str, str]:
    """(reason, violated field, message) of an INVALID_ARGUMENT."""
    from google.rpc import error_details_pb2  # noqa: PLC0415

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)
    assert status is not None
    reason, field = "", ""
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            field = bad.field_violations[0].field
    return reason, field, error.details() or ""


async def refused(call: Any) -> tuple[str, str, str]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return bad_request(caught.value)


def queued(resources: EdgeDeps) -> dict[Channel, int]:
    return {s.channel: s.pending_items for s in resources.node.outbox.stats()}


def vector(vector_id: str, values: list[float] | None = None, **payload: Any) -> memory_pb2.Vector:
    message = memory_pb2.Vector(vector_id=vector_id, values=values or [1.0] + [0.5] * (DIMENSION - 1))
    if payload:
        message.payload.update(payload)
    return message


async def test_authorize_refuses_what_central_cannot_store(
    offline_edge: EdgeDeps, edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub
) -> None:
    def authorize(**fields: Any) -> Any:
        request = edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"')
        context = fields.pop("context", None)
        for name, value in fields.items():
            setattr(request, name, value)
        if context is not None:
            request.context.update(context)
        return edge_stub.Authorize(request, timeout=10)

    assert await refused(authorize(resource='Doc::"a\x00b"')) == (
        "UNSTORABLE_VALUE",
        "resource",
        "resource: contains a NUL character, which central's database cannot store",
    )
    reason, field, message = await refused(authorize(resource='Doc::"' + "x" * 5000 + '"'))
    assert (reason, field) == ("VALUE_TOO_LONG", "resource")
    assert f"at most {limits.MAX_RESOURCE_BYTES} are allowed" in message
    assert (await refused(authorize(principal='User::"' + "p" * 2000 + '"')))[:2] == ("VALUE_TOO_LONG", "principal")
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(limits.MAX_JSON_DEPTH):
        nested = {"n": nested}
    assert (await refused(authorize(context={"deep": nested})))[0] == "JSON_TOO_DEEP"
    assert (await refused(authorize(context={"k\x00": 1})))[:2] == ("UNSTORABLE_VALUE", "context.k\x00")
    # Nothing was recorded for any of them; a fine request still is.
    assert queued(offline_edge)[Channel.DECISIONS] == 0
    await authorize()
    assert queued(offline_edge)[Channel.DECISIONS] == 1


async def test_episodes_vectors_and_sessions_refuse_what_central_cannot_store(
    offline_edge: EdgeDeps, edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub
) -> None:
    def episode(**fields: Any) -> Any:
        return edge_stub.AppendEpisode(edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(**fields)), timeout=10)

    assert (await refused(episode(content="a\x00b")))[:2] == ("UNSTORABLE_VALUE", "episode.content")
    assert (await refused(episode(content="x", session_id="s" * 300)))[:2] == ("VALUE_TOO_LONG", "episode.session_id")
    zero = episode(content="x", embedding=[0.0] * DIMENSION)
    assert (await refused(zero))[:2] == ("ZERO_VECTOR", "episode.embedding")

    def upsert(*vectors: memory_pb2.Vector) -> Any:
        return edge_stub.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=vectors), timeout=10)

    assert (await refused(upsert(vector("v1"), vector("v2", tag="a\x00"))))[:2] == (
        "UNSTORABLE_VALUE",
        "vectors[1].payload.tag",
    )
    assert (await refused(upsert(vector("v" * 300))))[:2] == ("VALUE_TOO_LONG", "vectors[0].vector_id")
    assert (await refused(upsert(vector("v0", [0.0] * DIMENSION))))[:2] == ("ZERO_VECTOR", "vectors[0].values")

    bad_turn = memory_pb2.Session(
        session_id="s1", messages=[memory_pb2.SessionMessage(role="user", content="fine")] * 2
    )
    bad_turn.messages[1].content = "bad\x00"
    put = edge_stub.PutSession(edge_pb2.PutSessionRequest(session=bad_turn), timeout=10)
    assert (await refused(put))[:2] == ("UNSTORABLE_VALUE", "session.messages[1].content")
    append = edge_pb2.AppendSessionMessagesRequest(
        session_id="s1", messages=[memory_pb2.SessionMessage(role="user", content="hi")]
    )
    append.state_patch.update({"score": math.inf})
    assert (await refused(edge_stub.AppendSessionMessages(append, timeout=10)))[:2] == (
        "NOT_FINITE",
        "state_patch.score",
    )
    assert queued(offline_edge) == dict.fromkeys(Channel, 0)
    assert await offline_edge.node.sessions.get("default", "s1") is None


@pytest.fixture
async def small_batch_stub(tmp_path: Path, redis_url: str) -> AsyncIterator[edge_pb2_grpc.EdgeServiceAsyncStub]:
    """An edge whose batches carry at most 4 KiB (``sync.batch.maxBytes``)."""
    document = edge_document(tmp_path / "edge", closed_port(), **{"sync.batch.maxBytes": 4096})
    document["cache"] = {"url": redis_url}
    resources = await open_edge(AeternaConfig.model_validate(document))
    await resources.node.start()
    server, port = create_server(resources.config, resources.node)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield edge_pb2_grpc.EdgeServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await resources.node.shutdown(0.1)
        await resources.close()


async def test_an_item_no_batch_could_carry_is_refused(small_batch_stub: edge_pb2_grpc.EdgeServiceAsyncStub) -> None:
    """A decision larger than a whole batch would block its channel for good: refused before the answer."""
    request = edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"')
    request.context.update({"note": "x" * 3600})  # the request fits, the item does not
    assert (await refused(small_batch_stub.Authorize(request, timeout=10)))[:2] == ("ITEM_TOO_LARGE", "decision")
    episode = memory_pb2.Episode(content="y" * 3600)
    reply = small_batch_stub.AppendEpisode(edge_pb2.AppendEpisodeRequest(episode=episode), timeout=10)
    assert (await refused(reply))[:2] == ("ITEM_TOO_LARGE", "episode")


def test_refused_items_move_to_the_dead_letters_with_the_ack(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "o.db", {c: ChannelLimits(100, 3600) for c in Channel})
    first = outbox.enqueue(Channel.DECISIONS, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    second = outbox.enqueue(Channel.DECISIONS, [{"id": "d"}])
    removed, moved = outbox.ack_refusing(
        Channel.DECISIONS,
        [first.sequence, second.sequence],
        second.sequence,
        {first.sequence: [("b", "INVALID_ITEM", "decisions[1].resource: contains a NUL"), ("zz", "X", "unknown")]},
    )
    assert removed == 4
    assert [(m.item_id, m.reason) for m in moved] == [("b", "INVALID_ITEM")]
    [row] = outbox.dead_letter_rows(Channel.DECISIONS)
    assert (row.batch_id, row.reason, row.items) == (first.batch_id, REFUSED_PREFIX + "INVALID_ITEM", [{"id": "b"}])
    assert row.detail == "b: decisions[1].resource: contains a NUL"
    stats = {s.channel: s for s in outbox.stats()}[Channel.DECISIONS]
    assert (stats.pending_items, stats.dead_letters, stats.acked_sequence) == (0, 1, second.sequence)
    # An operator can send it again once the cause is fixed (a new batch, a new sequence).
    assert outbox.requeue_dead_letters(Channel.DECISIONS) == 1
    [again] = outbox.pending(Channel.DECISIONS, 10)
    assert again.items == [{"id": "b"}]
    assert again.sequence == second.sequence + 1
    outbox.close()


def test_an_outbox_from_before_the_detail_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteOutbox(path, {c: ChannelLimits(100, 3600) for c in Channel}).close()
    with sqlite3.connect(path) as db:  # what an outbox made by an older edge looks like
        db.execute("ALTER TABLE dead_letters DROP COLUMN detail")
        db.execute(
            "INSERT INTO dead_letters(channel, sequence, batch_id, reason, created, moved, item_count, payload)"
            " VALUES ('decisions', 1, 'b1', 'expired', 0, 0, 1, ?)",
            (json.dumps([{"id": "x"}]).encode(),),
        )
    outbox = SqliteOutbox(path, {c: ChannelLimits(100, 3600) for c in Channel})
    [row] = outbox.dead_letter_rows(Channel.DECISIONS)
    assert (row.reason, row.detail) == ("expired", "")
    outbox.close()
