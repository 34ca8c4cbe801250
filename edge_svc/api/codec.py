"""Translation between the edge's records (for sessions also their stored JSON) and protobuf messages, both ways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2, policy_pb2
from aeterna.sync.v1 import sync_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from aeterna_shared import limits
from aeterna_shared.errors import InvalidArgument
from aeterna_shared.wire.canonical import session_checksum
from aeterna_shared.wire.validation import check_timestamp, json_of
from edge_svc.records import (
    ChangeKind,
    DecisionRecord,
    EpisodeRecord,
    JsonDict,
    Message,
    PolicyBundleRecord,
    ScoredRecord,
    SessionRecord,
    VectorRecord,
    change_kind,
)


def ts(nanos: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from epoch nanoseconds (unset when zero)."""
    stamp = timestamp_pb2.Timestamp()
    if nanos:
        stamp.FromNanoseconds(nanos)
    return stamp


def nanos(stamp: timestamp_pb2.Timestamp, field: str = "timestamp") -> int:
    """Epoch nanoseconds of a Timestamp (zero when unset); INVALID_ARGUMENT when out of range."""
    if not (stamp.seconds or stamp.nanos):
        return 0
    check_timestamp(stamp, field)
    return int(stamp.ToNanoseconds())


def struct(data: JsonDict) -> struct_pb2.Struct:
    """A Struct from a JSON dict."""
    value = struct_pb2.Struct()
    if data:
        value.update(data)
    return value


def from_struct(value: struct_pb2.Struct, field: str = "struct") -> JsonDict:
    """A JSON dict from a Struct; INVALID_ARGUMENT when it has no JSON form."""
    result: Any = json_of(value, field)
    return dict(result)


def cedar_context(value: struct_pb2.Struct) -> JsonDict:
    """A Cedar context record from a Struct.

    Struct carries every number as a double, but Cedar's only number type is a
    64-bit integer (Long): a whole number becomes an int, and a fraction is
    refused with a message saying what to send instead (Cedar's ``decimal``
    extension takes a string such as "1.5").
    """
    result: JsonDict = {key: _cedar_value(item, f"context.{key}") for key, item in from_struct(value).items()}
    return result


def _cedar_value(value: Any, path: str) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
        raise InvalidArgument.for_field(
            path, f"{value!r} is not a whole number; Cedar has no floating point (send a decimal as a string)"
        )
    if isinstance(value, dict):
        return {key: _cedar_value(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_cedar_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def session_to_proto(record: SessionRecord) -> memory_pb2.Session:
    """The protobuf session, with its checksum."""
    return document_to_proto(record.to_json())


def document_to_proto(document: JsonDict) -> memory_pb2.Session:
    """The protobuf session, with its checksum, of a session's JSON document (``SessionRecord.to_json``),
    as session memory stores it and a ``replace`` change carries it to the outbox."""
    message = memory_pb2.Session(
        session_id=document["id"],
        user_id=document.get("user", ""),
        messages=[_message_to_proto(m) for m in document.get("messages", [])],
    )
    if document.get("state"):
        message.state.CopyFrom(struct(document["state"]))
    if document.get("t"):
        message.last_activity_time.CopyFrom(ts(int(document["t"])))
    message.checksum = session_checksum(message)
    message.tenant_id = document.get("tenant", "")
    return message


def append_to_proto(change: JsonDict) -> sync_pb2.SessionAppend:
    """An ``append`` session change (an outbox item, ``edge_svc.records``) as the wire's ``SessionAppend``,
    with its checksum."""
    message = sync_pb2.SessionAppend(
        session_id=change["id"],
        user_id=change.get("user", ""),
        messages=[_message_to_proto(m) for m in change.get("messages", [])],
        last_activity_time=ts(int(change.get("t", 0))),
    )
    if change.get("patch"):
        message.state_patch.CopyFrom(struct(change["patch"]))
    message.checksum = session_checksum(message)
    message.tenant_id = change.get("tenant", "")
    return message


def session_changes_to_proto(
    changes: Sequence[JsonDict],
) -> tuple[list[memory_pb2.Session], list[sync_pb2.SessionAppend]]:
    """The whole sessions and the appends of a ``SyncSessionsRequest``, straight from outbox items."""
    sessions = [document_to_proto(c) for c in changes if change_kind(c) is ChangeKind.REPLACE]
    appends = [append_to_proto(c) for c in changes if change_kind(c) is ChangeKind.APPEND]
    return sessions, appends


def _message_to_proto(turn: JsonDict) -> memory_pb2.SessionMessage:
    """One turn of a session's JSON document (``Message.to_json``)."""
    message = memory_pb2.SessionMessage(role=turn["role"], content=turn["content"], message_id=turn.get("id", ""))
    if turn.get("t"):
        message.create_time.CopyFrom(ts(int(turn["t"])))
    if turn.get("meta"):
        message.metadata.CopyFrom(struct(turn["meta"]))
    return message


def message_from_proto(message: memory_pb2.SessionMessage) -> Message:
    """One conversation turn."""
    return Message(
        message.role,
        message.content,
        nanos(message.create_time, "messages.create_time"),
        from_struct(message.metadata),
        message.message_id,
    )


def session_from_proto(message: memory_pb2.Session) -> SessionRecord:
    """The record of a protobuf session (checksum and tenant are recomputed by the edge)."""
    return SessionRecord(
        session_id=message.session_id,
        user_id=message.user_id,
        messages=[message_from_proto(m) for m in message.messages],
        state=from_struct(message.state),
        last_activity=nanos(message.last_activity_time, "session.last_activity_time"),
    )


def vector_to_proto(record: VectorRecord) -> memory_pb2.Vector:
    """The protobuf vector."""
    message = memory_pb2.Vector(
        vector_id=record.vector_id,
        values=record.values,
        region=record.region,
        tenant_id=record.tenant_id,
        update_time=ts(record.update_time),
    )
    if record.payload:
        message.payload.CopyFrom(struct(record.payload))
    return message


def vector_from_proto(message: memory_pb2.Vector) -> VectorRecord:
    """The record of a protobuf vector."""
    return VectorRecord(
        vector_id=message.vector_id,
        values=list(message.values),
        region=message.region,
        tenant_id=message.tenant_id,
        payload=from_struct(message.payload),
        update_time=nanos(message.update_time, "vectors.update_time"),
    )


def scored_to_proto(hit: ScoredRecord) -> memory_pb2.ScoredVector:
    """A search hit."""
    return memory_pb2.ScoredVector(vector=vector_to_proto(hit.vector), score=hit.score)


def decision_to_proto(record: DecisionRecord) -> decision_pb2.Decision:
    """The protobuf decision."""
    message = decision_pb2.Decision(
        decision_id=record.decision_id,
        decide_time=ts(record.decide_time),
        principal=record.principal,
        action=record.action,
        resource=record.resource,
        effect=decision_pb2.EFFECT_ALLOW if record.allowed else decision_pb2.EFFECT_DENY,
        policy_version=record.policy_version,
        offline=record.offline,
    )
    if record.metadata:
        message.metadata.CopyFrom(struct(record.metadata))
    return message


def episode_to_proto(record: EpisodeRecord) -> memory_pb2.Episode:
    """The protobuf episode."""
    message = memory_pb2.Episode(
        episode_id=record.episode_id,
        session_id=record.session_id,
        content=record.content,
        embedding=record.embedding,
        occur_time=ts(record.occur_time),
        tenant_id=record.tenant_id,
    )
    if record.metadata:
        message.metadata.CopyFrom(struct(record.metadata))
    return message


def episode_from_proto(message: memory_pb2.Episode) -> EpisodeRecord:
    """The record of a protobuf episode."""
    return EpisodeRecord(
        episode_id=message.episode_id,
        session_id=message.session_id,
        content=message.content,
        embedding=list(message.embedding),
        metadata=from_struct(message.metadata),
        occur_time=nanos(message.occur_time, "episode.occur_time"),
    )


def bundle_from_proto(message: policy_pb2.PolicyBundle) -> PolicyBundleRecord:
    """The record of a policy bundle."""
    return PolicyBundleRecord(
        version=message.version,
        policies=tuple((p.policy_id, p.text) for p in message.policies),
        entities_json=message.entities_json or "[]",
        schema_json=message.schema_json,
        checksum=message.checksum,
        publish_time=nanos(message.publish_time),
    )


# --- what central can store (``aeterna_shared.limits``), checked before the edge answers OK ---------------
# Each raises INVALID_ARGUMENT naming the request's field; central runs the same checks on every item.


def check_session(record: SessionRecord, field: str = "session") -> None:
    """A whole session (PutSession)."""
    limits.validate_session_item(
        session_id=record.session_id,
        user_id=record.user_id,
        messages=record.messages,
        state=record.state or None,
        field=field,
    )


def check_append(
    session_id: str, user_id: str, messages: Sequence[memory_pb2.SessionMessage], state_patch: struct_pb2.Struct
) -> None:
    """The turns and state patch of an AppendSessionMessages request, named as in the request."""
    limits.validate_session_item(
        session_id=session_id,
        user_id=user_id,
        messages=messages,
        state=state_patch,
        field="",
        state_field="state_patch",
    )


def check_episode(record: EpisodeRecord, field: str = "episode") -> None:
    """An episode (AppendEpisode), after its id and time were filled in."""
    limits.validate_episode(
        episode_id=record.episode_id,
        session_id=record.session_id,
        content=record.content,
        embedding=record.embedding,
        metadata=record.metadata or None,
        field=field,
    )


def check_vectors(records: Sequence[VectorRecord]) -> None:
    """The vectors of an UpsertVectors request."""
    for index, record in enumerate(records):
        limits.validate_vector(
            vector_id=record.vector_id,
            values=record.values,
            region=record.region,
            payload=record.payload or None,
            field=f"vectors[{index}]",
        )


def check_authorization(principal: str, action: str, resource: str, context: JsonDict) -> None:
    """An Authorize request, whose decision the edge records for central."""
    limits.validate_authorization(principal=principal, action=action, resource=resource, context=context or None)
