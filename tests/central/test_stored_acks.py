"""``GetSyncCheckpoint`` answers the stored acks of the batches a reconnecting edge still holds.

An edge whose ack was lost (the stream broke after central committed the batch) learns on
reconnect that the batch is at or below the checkpoint. Before, it dropped the batch, and the
items central had refused in it never reached its dead letters. Now it names the batches it
holds and central answers each one's stored ack, failures included, for the caller's own batches
only. Against a real PostgreSQL, through central's gRPC API.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import grpc
import pytest
from aeterna.sync.v1 import sync_pb2
from grpc import aio

from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_shared import limits
from aeterna_shared.config import AeternaConfig
from edge_svc.api.central_client import GrpcCentral
from edge_svc.deps import central_link, outbox_limits
from edge_svc.link import LinkMonitor
from edge_svc.records import Channel, VectorRecord
from edge_svc.store.outbox import REFUSED_PREFIX, SqliteOutbox
from edge_svc.sync import SyncEngine
from tests.central.conftest import Central, Edge
from tests.central.test_poison_items import LONG_RESOURCE, decision, replay
from tests.edge.conftest import edge_document
from tests.support.postgres import TEST_VECTOR_DIMENSION


async def _checkpoint(central: Central, edge: Edge, *held: str) -> sync_pb2.GetSyncCheckpointResponse:
    request = sync_pb2.GetSyncCheckpointRequest(held_batch_ids=list(held))
    return await central.sync.GetSyncCheckpoint(request, metadata=edge.metadata)


async def test_the_held_batches_central_applied_come_back_with_their_failures(central: Central) -> None:
    edge = Edge("edge-acks")
    first = await replay(central, edge, [decision("a-ok"), decision("a-long", resource=LONG_RESOURCE)])
    second = await replay(central, edge, [decision("b-ok")])
    assert (first.status, first.failed, second.checkpoint) == (sync_pb2.ACK_STATUS_PARTIAL, 1, 2)
    never_sent = str(uuid.uuid4())

    reply = await _checkpoint(central, edge, never_sent, second.batch_id, first.batch_id)

    assert [(c.channel, c.sequence) for c in reply.checkpoints] == [(sync_pb2.SYNC_CHANNEL_DECISIONS, 2)]
    # In the order named; the batch central never applied is left out.
    assert [a.batch_id for a in reply.acks] == [second.batch_id, first.batch_id]
    stored = reply.acks[1]
    assert (stored.status, stored.sequence, stored.processed, stored.failed) == (
        sync_pb2.ACK_STATUS_DUPLICATE,
        1,
        1,
        1,
    )
    assert [(f.item_id, f.reason) for f in stored.failures] == [("a-long", "INVALID_ITEM")]
    assert stored.checkpoint == 2  # the channel's checkpoint now, as a resend's DUPLICATE ack says


async def test_the_stored_acks_stop_at_the_reply_budget(central: Central, monkeypatch: pytest.MonkeyPatch) -> None:
    """What does not fit is left out (the edge sends those batches again and gets DUPLICATE acks)."""
    edge = Edge("edge-budget")
    acks = [await replay(central, edge, [decision(f"{n}-long", resource=LONG_RESOURCE)]) for n in range(3)]
    whole = await _checkpoint(central, edge, *(a.batch_id for a in acks))
    assert len(whole.acks) == 3
    monkeypatch.setattr("central_svc.api.sync._STORED_ACKS_BYTES", whole.ByteSize() - whole.acks[2].ByteSize() // 2)
    cut = await _checkpoint(central, edge, *(a.batch_id for a in acks))
    assert [a.batch_id for a in cut.acks] == [a.batch_id for a in acks[:2]]


async def test_another_edges_batches_are_not_answered(central: Central) -> None:
    owner, other = Edge("edge-owner"), Edge("edge-other")
    ack = await replay(central, owner, [decision("o-long", resource=LONG_RESOURCE)])
    reply = await _checkpoint(central, other, ack.batch_id)
    assert list(reply.acks) == []
    assert list(reply.checkpoints) == []
    # Another incarnation of the same agent id is another edge's state too.
    request = sync_pb2.GetSyncCheckpointRequest(
        incarnation_id="c2f0e6a4-5a0e-4a57-8f1e-9d4b6a7c1b22", held_batch_ids=[ack.batch_id]
    )
    assert list((await central.sync.GetSyncCheckpoint(request, metadata=owner.metadata)).acks) == []


async def test_too_many_or_unusable_ids_are_invalid_argument(central: Central) -> None:
    edge = Edge("edge-many")
    for held, field in (
        ([str(uuid.uuid4()) for _ in range(limits.MAX_HELD_BATCH_IDS + 1)], "held_batch_ids"),
        (["ok", "x" * (limits.MAX_ID_BYTES + 1)], "held_batch_ids[1]"),
        (["a\x00b"], "held_batch_ids[0]"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await _checkpoint(central, edge, *held)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(f"{field}:"), caught.value.details()
    assert (
        list((await _checkpoint(central, edge, *[str(uuid.uuid4()) for _ in range(limits.MAX_HELD_BATCH_IDS)])).acks)
        == []
    )


async def test_the_edge_dead_letters_what_central_refused_in_a_batch_whose_ack_it_lost(
    central: Central, tmp_path: Path
) -> None:
    """The edge's own client and sync engine against the real central: vectors of a dimension central is
    not configured for are sent, central refuses each one and commits the batch, and the ack never reaches
    the engine (the client alone sent it). The reconnect settles the batch from central's stored ack."""
    document = edge_document(
        tmp_path / "edge",
        central.port,
        **{
            "sync.signing.key": DEVELOPMENT_KEY.decode(),
            "sync.memoryLayers.session.syncEnabled": False,
            "vectorDatabase.dimension": TEST_VECTOR_DIMENSION + 1,
        },
    )
    config = AeternaConfig.model_validate(document)
    outbox = SqliteOutbox(tmp_path / "outbox.db", outbox_limits(config))
    client = GrpcCentral(central_link(config), incarnation_id=outbox.incarnation_id)
    link = LinkMonitor(config.central_server.health_check, client.check_health)
    try:
        assert await link.check_once()
        # No session store: session sync is off in this config, so the engine never reads one.
        engine = SyncEngine(config, outbox, client, link, sessions=None)  # type: ignore[arg-type]
        rng = random.Random(7)
        vectors = [
            VectorRecord(f"w{n}", [rng.uniform(-1, 1) for _ in range(TEST_VECTOR_DIMENSION + 1)]) for n in range(3)
        ]
        await engine.queue_vectors(vectors)
        [held] = outbox.pending(Channel.VECTORS, 10)
        [lost] = await client.send(Channel.VECTORS, [held])  # applied at central; the engine never sees it
        assert (lost.sequence, lost.failed) == (1, 3)

        engine.retry_base = 0.0
        await engine.resume()

        [row] = outbox.dead_letter_rows(Channel.VECTORS)
        assert row.batch_id == held.batch_id
        assert [item["id"] for item in row.items] == ["w0", "w1", "w2"]
        assert row.reason == REFUSED_PREFIX + "BAD_VECTOR"
        assert outbox.pending(Channel.VECTORS, 10) == []
    finally:
        await link.stop()
        await client.close()
        outbox.close()
