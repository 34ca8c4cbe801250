"""The edge's incarnation: made once with its outbox database, kept across restarts, shown in its status."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc

from aeterna_cli.status import render_status
from edge_svc.deps import EdgeDeps
from edge_svc.records import Channel
from edge_svc.store.outbox import ChannelLimits, SqliteOutbox

LIMITS = {c: ChannelLimits(100, 3600) for c in Channel}

# The outbox schema as it was before incarnations (no ``meta`` table).
_PRE_INCARNATION_SCHEMA = """
CREATE TABLE batches (channel TEXT NOT NULL, sequence INTEGER NOT NULL, batch_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, item_count INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (channel, sequence));
CREATE TABLE channels (channel TEXT PRIMARY KEY, next_sequence INTEGER NOT NULL DEFAULT 1,
    acked_sequence INTEGER NOT NULL DEFAULT 0, last_sync REAL, dead_letters INTEGER NOT NULL DEFAULT 0);
INSERT INTO channels(channel, next_sequence, acked_sequence) VALUES ('decisions', 904, 903);
"""


def test_a_new_outbox_makes_an_incarnation_and_keeps_it(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3", LIMITS)
    incarnation = outbox.incarnation_id
    assert str(uuid.UUID(incarnation)) == incarnation
    outbox.enqueue(Channel.DECISIONS, [{"id": "a"}])
    outbox.close()
    reopened = SqliteOutbox(tmp_path / "outbox.sqlite3", LIMITS)
    assert reopened.incarnation_id == incarnation
    reopened.close()
    # An empty data directory is a new incarnation, whose sequences start at 1 again.
    fresh = SqliteOutbox(tmp_path / "again" / "outbox.sqlite3", LIMITS)
    assert fresh.incarnation_id not in ("", incarnation)
    assert fresh.enqueue(Channel.DECISIONS, [{"id": "b"}]).sequence == 1
    fresh.close()


def test_an_outbox_from_before_incarnations_keeps_the_empty_one(tmp_path: Path) -> None:
    """Its sequences continue those central already has under the empty incarnation."""
    path = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_PRE_INCARNATION_SCHEMA)
    db.close()
    outbox = SqliteOutbox(path, LIMITS)
    assert outbox.incarnation_id == ""
    assert outbox.enqueue(Channel.DECISIONS, [{"id": "a"}]).sequence == 904
    outbox.close()
    assert SqliteOutbox(path, LIMITS).incarnation_id == ""


async def test_status_shows_the_incarnation(
    offline_edge: EdgeDeps, edge_stub: edge_pb2_grpc.EdgeServiceAsyncStub
) -> None:
    reply = await edge_stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    assert reply.incarnation_id == offline_edge.node.outbox.incarnation_id != ""
    table = render_status({"agentId": reply.agent_id, "incarnationId": reply.incarnation_id})
    assert f"incarnation     {reply.incarnation_id}" in table
