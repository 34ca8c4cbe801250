"""``aeterna.edge.v1.EdgeService``: protobuf in, domain call, protobuf out. Nothing else happens here."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.policy.v1 import decision_pb2
from google.protobuf import struct_pb2

from aeterna_security.identity import current_identity
from aeterna_shared.errors import InvalidArgument, NotFound
from aeterna_shared.wire.validation import json_of
from edge_svc.api import codec
from edge_svc.api.central_client import CHANNELS
from edge_svc.node import EdgeNode
from edge_svc.records import VectorRecord, now_ns

Context = Any


MAX_WORKING_TTL = timedelta(days=1)
"""The longest TTL a working-memory value may ask for."""


class EdgeService(edge_pb2_grpc.EdgeServiceServicer):
    """The agent-facing API of one edge."""

    def __init__(self, node: EdgeNode) -> None:
        self._node = node

    def _tenant(self) -> str:
        return self._node.tenant_of(current_identity().tenant_id)

    async def SetWorkingMemory(
        self, request: edge_pb2.SetWorkingMemoryRequest, context: Context
    ) -> edge_pb2.SetWorkingMemoryResponse:
        """Store a working-memory value."""
        ttl = None
        if request.HasField("ttl"):
            seconds = request.ttl.seconds + request.ttl.nanos / 1e9
            # Working memory lives seconds (spec: 1-5 s); a day is a generous bound that also keeps
            # the value within what a timedelta and Redis' PX accept.
            if not 0 <= seconds <= MAX_WORKING_TTL.total_seconds():
                raise InvalidArgument.for_field("ttl", f"must be between 0 and {MAX_WORKING_TTL}")
            ttl = timedelta(seconds=seconds)
        value = json_of(request.value, "value") if request.HasField("value") else None
        expires = await self._node.working.set(self._tenant(), request.key, value, ttl)
        return edge_pb2.SetWorkingMemoryResponse(expire_time=codec.ts(expires))

    async def GetWorkingMemory(
        self, request: edge_pb2.GetWorkingMemoryRequest, context: Context
    ) -> edge_pb2.GetWorkingMemoryResponse:
        """Read a working-memory value."""
        found, value = await self._node.working.get(self._tenant(), request.key)
        if not found:
            raise NotFound(f"working-memory key {request.key!r} does not exist or expired", reason="KEY_NOT_FOUND")
        response = edge_pb2.GetWorkingMemoryResponse()
        response.value.CopyFrom(_json_value(value))
        return response

    async def PutSession(self, request: edge_pb2.PutSessionRequest, context: Context) -> edge_pb2.PutSessionResponse:
        """Write a whole session."""
        if not request.HasField("session"):
            raise InvalidArgument.for_field("session", "is required")
        record = codec.session_from_proto(request.session)
        codec.check_session(record)
        stored = await self._node.sessions.put(self._tenant(), record)
        return edge_pb2.PutSessionResponse(session=codec.session_to_proto(stored))

    async def GetSession(self, request: edge_pb2.GetSessionRequest, context: Context) -> edge_pb2.GetSessionResponse:
        """Read a session locally, or through from central."""
        tenant = self._tenant()
        if not request.session_id:
            raise InvalidArgument.for_field("session_id", "must not be empty")
        record, from_central = await self._node.get_session(tenant, request.session_id)
        return edge_pb2.GetSessionResponse(
            session=codec.session_to_proto(record),
            source=edge_pb2.SESSION_SOURCE_CENTRAL if from_central else edge_pb2.SESSION_SOURCE_LOCAL,
        )

    async def AppendSessionMessages(
        self, request: edge_pb2.AppendSessionMessagesRequest, context: Context
    ) -> edge_pb2.AppendSessionMessagesResponse:
        """Append turns, creating the session if needed."""
        codec.check_append(request.session_id, request.user_id, request.messages, request.state_patch)
        tenant = self._tenant()
        if not request.session_id:
            raise InvalidArgument.for_field("session_id", "must not be empty")
        if not request.messages and not request.state_patch.fields:
            raise InvalidArgument.for_field("messages", "give at least one message or a state_patch")
        session = await self._node.append_session(
            tenant,
            session_id=request.session_id,
            user_id=request.user_id,
            messages=[codec.message_from_proto(m) for m in request.messages],
            state_patch=codec.from_struct(request.state_patch),
        )
        return edge_pb2.AppendSessionMessagesResponse(session=codec.session_to_proto(session))

    async def AppendEpisode(
        self, request: edge_pb2.AppendEpisodeRequest, context: Context
    ) -> edge_pb2.AppendEpisodeResponse:
        """Record an episode (eventual: queued; strong: stored at central first)."""
        tenant = self._tenant()
        if not request.HasField("episode"):
            raise InvalidArgument.for_field("episode", "is required")
        record = codec.episode_from_proto(request.episode)
        record.episode_id = record.episode_id or str(uuid.uuid4())
        record.occur_time = record.occur_time or now_ns()
        codec.check_episode(record)
        stored = await self._node.append_episode(tenant, record)
        return edge_pb2.AppendEpisodeResponse(episode_id=record.episode_id, stored_at_central=stored)

    async def UpsertVectors(
        self, request: edge_pb2.UpsertVectorsRequest, context: Context
    ) -> edge_pb2.UpsertVectorsResponse:
        """Write vectors locally and queue them for the vector sync."""
        records: list[VectorRecord] = [codec.vector_from_proto(v) for v in request.vectors]
        codec.check_vectors(records)
        count = await self._node.vectors.upsert(self._tenant(), records)
        return edge_pb2.UpsertVectorsResponse(upserted=count)

    async def SearchVectors(
        self, request: edge_pb2.SearchVectorsRequest, context: Context
    ) -> edge_pb2.SearchVectorsResponse:
        """Local search with fallback to central."""
        self._tenant()
        result = await self._node.vectors.search(list(request.embedding), request.limit, request.score_threshold)
        return edge_pb2.SearchVectorsResponse(
            results=[codec.scored_to_proto(hit) for hit in result.hits],
            local_count=result.local_count,
            central_count=result.central_count,
            partial=result.partial,
        )

    async def Authorize(self, request: edge_pb2.AuthorizeRequest, context: Context) -> edge_pb2.AuthorizeResponse:
        """Decide with the current Cedar bundle."""
        self._tenant()
        cedar_context = codec.cedar_context(request.context)
        # The decision is recorded for central: refuse here what central could not store.
        codec.check_authorization(request.principal, request.action, request.resource, cedar_context)
        verdict = await self._node.agent.authorize(
            request.principal, request.action, request.resource, cedar_context, request.entities_json
        )
        return edge_pb2.AuthorizeResponse(
            effect=decision_pb2.EFFECT_ALLOW if verdict.allowed else decision_pb2.EFFECT_DENY,
            determining_policies=verdict.reasons,
            errors=verdict.errors,
            policy_version=verdict.policy_version,
            decision_id=verdict.decision_id,
            offline=verdict.offline,
        )

    async def GetEdgeStatus(
        self, request: edge_pb2.GetEdgeStatusRequest, context: Context
    ) -> edge_pb2.GetEdgeStatusResponse:
        """Link state, queues, last syncs, policy version, incarnation."""
        status = await self._node.status()
        response = edge_pb2.GetEdgeStatusResponse(
            agent_id=status.agent_id,
            region=status.region,
            link_state=edge_pb2.LINK_STATE_ONLINE if status.online else edge_pb2.LINK_STATE_OFFLINE,
            link_change_time=codec.ts(int(status.link_change_time * 1e9)),
            consecutive_failures=status.consecutive_failures,
            policy_version=status.policy_version,
            local_sessions=status.local_sessions,
            local_vectors=status.local_vectors,
            incarnation_id=status.incarnation_id,
            degraded=bool(status.degraded),
        )
        for queue in status.queues:
            depth = response.queues.add(
                channel=CHANNELS[queue.channel],
                pending_items=queue.pending_items,
                pending_batches=queue.pending_batches,
                dead_letters=queue.dead_letters,
                acked_sequence=queue.acked_sequence,
                degraded=queue.channel in status.degraded,
                degraded_reason=status.degraded.get(queue.channel, ""),
            )
            if queue.last_sync:
                depth.last_sync_time.CopyFrom(codec.ts(int(queue.last_sync * 1e9)))
        return response

    async def FlushSync(self, request: edge_pb2.FlushSyncRequest, context: Context) -> edge_pb2.FlushSyncResponse:
        """Sync everything now; UNAVAILABLE (``SYNC_STUCK``) when a channel made no progress although online."""
        result = await self._node.sync.flush()
        return edge_pb2.FlushSyncResponse(
            batches_acked=result.batches_acked, items_acked=result.items_acked, items_pending=result.items_pending
        )


def _json_value(value: Any) -> struct_pb2.Value:
    """A ``google.protobuf.Value`` holding any JSON value."""
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]
