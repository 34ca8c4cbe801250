"""A small client of an edge's ``GetEdgeStatus``, for ``aeterna status``."""

from __future__ import annotations

from typing import Any

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.sync.v1 import sync_pb2
from google.protobuf import json_format
from grpc import aio


async def fetch_status(
    target: str, deadline_seconds: float, metadata: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """The edge's status as a JSON-ready dict (camelCase keys, enum names shortened)."""
    async with aio.insecure_channel(target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        reply = await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=deadline_seconds, metadata=metadata)
    status: dict[str, Any] = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
    status["linkState"] = edge_pb2.LinkState.Name(reply.link_state).removeprefix("LINK_STATE_")
    for queue, raw in zip(status.get("queues", []), reply.queues, strict=True):
        queue["channel"] = sync_pb2.SyncChannel.Name(raw.channel).removeprefix("SYNC_CHANNEL_").lower()
    return status
