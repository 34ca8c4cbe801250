"""Protobuf <-> domain translation shared by central's servicers."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from aeterna.sync.v1 import sync_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from aeterna_shared.wire.canonical import SignedRequest
from aeterna_shared.wire.validation import check_timestamp, json_of
from central_svc.batches import Ack, BatchMeta, Channel


def to_datetime(stamp: timestamp_pb2.Timestamp, present: bool = True, field: str = "timestamp") -> datetime | None:
    """A timezone-aware datetime, or None when the field is unset; INVALID_ARGUMENT when out of range."""
    if not present:
        return None
    check_timestamp(stamp, field)
    return stamp.ToDatetime(tzinfo=UTC)


def to_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def content_digest(request: SignedRequest) -> bytes:
    """SHA-256 of the batch without what a resend may change: signature, sent_time, floor_sequence.

    A re-signed resend of the same batch has the same digest, so it is a
    DUPLICATE rather than a reuse of the batch id with other content.
    """
    header = request.header
    signature, floor = header.signature, header.floor_sequence
    sent = timestamp_pb2.Timestamp()
    had_time = header.HasField("sent_time")
    sent.CopyFrom(header.sent_time)
    header.signature = b""
    header.floor_sequence = 0
    header.ClearField("sent_time")
    try:
        payload = request.SerializeToString(deterministic=True)
    finally:
        header.signature = signature
        header.floor_sequence = floor
        if had_time:
            header.sent_time.CopyFrom(sent)
    return hashlib.sha256(payload).digest()


def batch_meta(request: SignedRequest, channel: Channel) -> BatchMeta:
    """The domain view of a batch header."""
    header = request.header
    return BatchMeta(
        batch_id=header.batch_id,
        sequence=header.sequence,
        floor_sequence=header.floor_sequence,
        incarnation_id=header.incarnation_id,
        agent_id=header.agent_id,
        region=header.region,
        sent_time=to_datetime(header.sent_time, header.HasField("sent_time"), "header.sent_time"),
        channel=channel,
        digest=content_digest(request),
    )


def batch_ack(ack: Ack, next_sync: datetime) -> sync_pb2.BatchAck:
    """The wire ack."""
    return sync_pb2.BatchAck(
        batch_id=ack.batch_id,
        sequence=ack.sequence,
        status=int(ack.status),  # type: ignore[arg-type]
        processed=ack.processed,
        failed=ack.failed,
        failures=[sync_pb2.ItemFailure(item_id=f.item_id, reason=f.reason, message=f.message) for f in ack.failures],
        next_sync_time=to_timestamp(next_sync),
        checkpoint=ack.checkpoint,
    )


def struct_json(value: struct_pb2.Struct, field: str = "metadata") -> str:
    """A Struct as compact JSON text; INVALID_ARGUMENT when it has no JSON form."""
    return json.dumps(json_of(value, field), separators=(",", ":"))


def json_struct(text: str) -> struct_pb2.Struct:
    """JSON object text as a Struct."""
    value = struct_pb2.Struct()
    document: Any = json.loads(text or "{}")
    value.update(document if isinstance(document, dict) else {})
    return value
