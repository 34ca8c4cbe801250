"""Merging a ``SessionAppend`` into a stored ``Session``: the wire encoding's part of session merges.

Central stores each session as its deterministic protobuf encoding, so the
merge (decode, add the new turns that are not there yet, set the state keys,
re-encode with a fresh checksum) belongs with the protobuf types, here; the
domain (``central_svc.sessions``) decides what to merge and locks the rows.
"""

from __future__ import annotations

from datetime import UTC

from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.wire.canonical import session_checksum
from central_svc.sessions import MergedSession


class ProtobufSessionMerger:
    """The ``SessionMerger`` of protobuf-encoded sessions."""

    def merge(self, stored: bytes | None, append: bytes, tenant_id: str) -> MergedSession:
        """``stored`` plus the turns of ``append`` it does not hold yet (by message id), and its state keys."""
        session = memory_pb2.Session.FromString(stored) if stored else memory_pb2.Session()
        change = sync_pb2.SessionAppend.FromString(append)
        session.session_id = change.session_id
        if change.user_id and not session.user_id:
            session.user_id = change.user_id
        held = {m.message_id for m in session.messages if m.message_id}
        for message in change.messages:
            if message.message_id not in held:
                session.messages.append(message)
                held.add(message.message_id)
        for key, value in change.state_patch.fields.items():
            session.state.fields[key].CopyFrom(value)
        if change.last_activity_time.ToNanoseconds() > session.last_activity_time.ToNanoseconds():
            session.last_activity_time.CopyFrom(change.last_activity_time)
        session.checksum = ""
        session.tenant_id = ""
        session.checksum = session_checksum(session)
        session.tenant_id = tenant_id
        return MergedSession(
            data=session.SerializeToString(deterministic=True),
            user_id=session.user_id,
            last_activity=session.last_activity_time.ToDatetime(tzinfo=UTC),
            checksum=session.checksum,
        )
