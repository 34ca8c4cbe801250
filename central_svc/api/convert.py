"""Protobuf <-> domain translation shared by central's servicers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aeterna.sync.v1 import sync_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from aeterna_shared.wire.validation import check_timestamp, json_of
from central_svc.batches import Ack

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(stamp: timestamp_pb2.Timestamp, present: bool = True, field: str = "timestamp") -> datetime | None:
    """A timezone-aware datetime, or None when the field is unset; INVALID_ARGUMENT when out of range."""
    if not present:
        return None
    check_timestamp(stamp, field)
    # ``stamp.ToDatetime(tzinfo=UTC)``, without its second range check and time zone conversion (a third
    # of a session's translation at central): the same value, nanoseconds truncated to microseconds.
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def to_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def batch_ack(ack: Ack, next_sync: datetime) -> sync_pb2.BatchAck:
    """The wire ack."""
    return sync_pb2.BatchAck(
        batch_id=ack.batch_id,
        sequence=ack.sequence,
        status=sync_pb2.AckStatus.ValueType(ack.status),
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
