"""``aeterna.sync.v1.SyncService``: translation between the wire and central's domain objects."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from enum import IntEnum
from typing import Any, TypeVar, cast

from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import struct_pb2
from grpc import aio

from aeterna_security.identity import Identity, current_identity
from aeterna_security.keys import SigningKeyring
from aeterna_shared import limits
from aeterna_shared.config.model import SyncConfig
from aeterna_shared.errors import InvalidArgument
from central_svc import page_tokens
from central_svc.admission import AdmissionRules, admit
from central_svc.api.convert import batch_ack, json_struct, struct_json, to_datetime, to_timestamp
from central_svc.batches import Ack, BatchMeta, Channel, check_incarnation_id
from central_svc.deps import CentralDeps
from central_svc.episodes import EpisodeFilter, EpisodeRecord
from central_svc.replay import ConflictRecord, ConflictState, DecisionRecord, Resolution
from central_svc.sessions import SessionAppendRecord, SessionRecord
from central_svc.vectors import VectorQuery, VectorRecord

_E = TypeVar("_E", bound=IntEnum)
_T = TypeVar("_T")

Context = aio.ServicerContext[Any, Any]

_STORED_ACKS_BYTES = 1024 * 1024
"""How much of a ``GetSyncCheckpoint`` reply the stored acks may take (a named batch left out can be resent)."""

_SessionBatch = tuple[Identity, BatchMeta, list[SessionRecord], list[SessionAppendRecord]]
"""A session batch ready for ``SessionSync.ingest``: the caller, the admitted header and the items."""


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """Every RPC of the sync API; all logic lives in the domain objects of ``CentralDeps``."""

    def __init__(self, sync: SyncConfig, deps: CentralDeps, keyring: SigningKeyring) -> None:
        self._deps = deps
        self._admission = AdmissionRules.from_config(sync, keyring.key_for, deps.clock)
        self._intervals = {
            Channel.SESSIONS: sync.session_interval,
            Channel.VECTORS: sync.episodic_memory.vector_sync.interval,
            Channel.EPISODES: sync.memory_layers.episodic.interval,
            Channel.DECISIONS: sync.session_interval,
        }

    # --- batch plumbing ---------------------------------------------------------------

    def _ack(self, ack: Ack, channel: Channel) -> sync_pb2.BatchAck:
        next_sync: datetime = self._deps.clock() + self._intervals[channel]
        return batch_ack(ack, next_sync)

    # --- sessions ---------------------------------------------------------------------

    async def SyncSessions(
        self, request_iterator: AsyncIterator[sync_pb2.SyncSessionsRequest], context: Context
    ) -> AsyncIterator[sync_pb2.SyncSessionsResponse]:
        """One ack per batch, in arrival order; batches are written one after the other.

        While a batch is written, the next one is read, admitted (signature,
        digest) and translated into records in a worker thread, so that the CPU
        work of batch k+1 overlaps the database round trips of batch k. A batch
        refused at admission still ends the stream only after every batch before
        it was written and acknowledged.
        """
        async for identity, meta, records, appends in read_ahead(request_iterator, self._prepare_sessions):
            ack = await self._deps.sessions.ingest(meta, identity.tenant_id, records, appends)
            yield sync_pb2.SyncSessionsResponse(ack=self._ack(ack, Channel.SESSIONS))

    def _prepare_sessions(self, request: sync_pb2.SyncSessionsRequest) -> _SessionBatch:
        """Admission and translation of one session batch (runs in a worker thread; raises what ``admit`` raises)."""
        identity = current_identity()
        meta = admit(request, identity, Channel.SESSIONS, len(request.sessions) + len(request.appends), self._admission)
        records = [
            SessionRecord(**_session_item(s, f"sessions[{index}]", s.state, "state"))
            for index, s in enumerate(request.sessions)
        ]
        appends = [
            SessionAppendRecord(
                **_session_item(a, f"appends[{index}]", a.state_patch, "state_patch"),
                message_ids=tuple(m.message_id for m in a.messages),
            )
            for index, a in enumerate(request.appends)
        ]
        return identity, meta, records, appends

    async def GetSession(self, request: sync_pb2.GetSessionRequest, context: Context) -> sync_pb2.GetSessionResponse:
        """Tenant-scoped read."""
        if not request.session_id:
            raise InvalidArgument.for_field("session_id", "required")
        stored = await self._deps.sessions.get(current_identity().tenant_id, request.session_id)
        return sync_pb2.GetSessionResponse(
            session=memory_pb2.Session.FromString(stored.data),
            agent_id=stored.agent_id,
            sync_time=to_timestamp(stored.synced_at),
        )

    async def GetSyncCheckpoint(
        self, request: sync_pb2.GetSyncCheckpointRequest, context: Context
    ) -> sync_pb2.GetSyncCheckpointResponse:
        """The caller's checkpoints, for the incarnation asked for, and the stored acks of the batches it named.

        The acks are the caller's own (agent id and incarnation), in the order named, and stop
        before the reply passes ``_STORED_ACKS_BYTES``: what is left out can be sent again.
        """
        check_incarnation_id(request.incarnation_id, "incarnation_id")
        named = list(request.held_batch_ids)
        if len(named) > limits.MAX_HELD_BATCH_IDS:
            raise InvalidArgument.for_field(
                "held_batch_ids", f"names {len(named)} batches; at most {limits.MAX_HELD_BATCH_IDS} per call"
            )
        for index, batch_id in enumerate(named):
            limits.check_id(batch_id, f"held_batch_ids[{index}]")
        agent_id = current_identity().agent_id
        checkpoints = await self._deps.ledger.checkpoints(agent_id, request.incarnation_id)
        reply = sync_pb2.GetSyncCheckpointResponse(
            checkpoints=[
                sync_pb2.ChannelCheckpoint(channel=sync_pb2.SyncChannel.ValueType(channel), sequence=sequence)
                for channel, sequence in checkpoints.items()
            ]
        )
        size = reply.ByteSize()
        for channel, ack in await self._deps.ledger.stored_acks(agent_id, request.incarnation_id, named):
            wire = self._ack(ack, channel)
            size += wire.ByteSize() + 8
            if size > _STORED_ACKS_BYTES:
                break
            reply.acks.append(wire)
        return reply

    # --- vectors ----------------------------------------------------------------------

    async def SyncVectors(
        self, request_iterator: AsyncIterator[sync_pb2.SyncVectorsRequest], context: Context
    ) -> AsyncIterator[sync_pb2.SyncVectorsResponse]:
        """One ack per vector batch."""
        async for request in request_iterator:
            identity = current_identity()
            meta = admit(request, identity, Channel.VECTORS, len(request.vectors), self._admission)
            now = self._deps.clock()
            records = []
            for index, v in enumerate(request.vectors):
                # A value without a stored form fails this item alone (see ``_item``), not the batch.
                payload, bad_payload = (
                    _item(struct_json, v.payload, f"vectors[{index}].payload") if v.HasField("payload") else ("{}", "")
                )
                update_time, bad_time = _item(
                    to_datetime, v.update_time, v.HasField("update_time"), f"vectors[{index}].update_time"
                )
                records.append(
                    VectorRecord(
                        vector_id=v.vector_id,
                        values=list(v.values),
                        region=v.region or meta.region,
                        payload_json=payload or "{}",
                        update_time=update_time or now,
                        claimed_tenant_id=v.tenant_id,
                        problem=bad_payload or bad_time,
                    )
                )
            ack = await self._deps.vectors.ingest(meta, identity.tenant_id, records)
            yield sync_pb2.SyncVectorsResponse(ack=self._ack(ack, Channel.VECTORS))

    async def SearchVectors(
        self, request: sync_pb2.SearchVectorsRequest, context: Context
    ) -> sync_pb2.SearchVectorsResponse:
        """Nearest neighbours in the caller's tenant."""
        hits = await self._deps.vectors.search(
            VectorQuery(
                tenant_id=current_identity().tenant_id,
                embedding=list(request.embedding),
                limit=request.limit or 10,
                score_threshold=request.score_threshold,
                exclude_regions=tuple(request.filter.exclude_regions),
                exclude_ids=tuple(request.filter.exclude_vector_ids),
            )
        )
        return sync_pb2.SearchVectorsResponse(
            results=[
                memory_pb2.ScoredVector(
                    vector=memory_pb2.Vector(
                        vector_id=hit.vector_id,
                        values=hit.values,
                        region=hit.region,
                        tenant_id=hit.tenant_id,
                        payload=json_struct(hit.payload_json),
                        update_time=to_timestamp(hit.update_time),
                    ),
                    score=hit.score,
                )
                for hit in hits
            ]
        )

    # --- decisions --------------------------------------------------------------------

    async def ReplayDecisions(
        self, request: sync_pb2.ReplayDecisionsRequest, context: Context
    ) -> sync_pb2.ReplayDecisionsResponse:
        """Store decisions and settle conflicts by the configured policy."""
        identity = current_identity()
        meta = admit(request, identity, Channel.DECISIONS, len(request.decisions), self._admission)
        records = []
        for index, decision in enumerate(request.decisions):
            # The deciding agent is the credential's, whatever the payload said.
            decision.agent_id = identity.agent_id
            decide_time, bad_time = _item(
                to_datetime, decision.decide_time, decision.HasField("decide_time"), f"decisions[{index}].decide_time"
            )
            records.append(
                DecisionRecord(
                    decision_id=decision.decision_id,
                    resource=decision.resource,
                    action=decision.action,
                    decide_time=decide_time,
                    data=decision.SerializeToString(deterministic=True),
                    principal=decision.principal,
                    metadata=decision.metadata if decision.HasField("metadata") else None,
                    problem=bad_time,
                )
            )
        ack = await self._deps.decisions.replay(meta, identity.tenant_id, records)
        return sync_pb2.ReplayDecisionsResponse(
            ack=self._ack(ack, Channel.DECISIONS),
            results=[
                sync_pb2.DecisionResult(
                    decision_id=r.decision_id,
                    outcome=sync_pb2.ReplayOutcome.ValueType(r.outcome),
                    conflicting_decision_id=r.conflicting_decision_id,
                    conflict_id=r.conflict_id,
                )
                for r in ack.results
            ],
        )

    async def ListConflicts(
        self, request: sync_pb2.ListConflictsRequest, context: Context
    ) -> sync_pb2.ListConflictsResponse:
        """Review items of the caller's tenant, oldest first."""
        tenant = current_identity().tenant_id
        state = _enum(ConflictState, request.state, "state")
        records, token = await page_tokens.paginate(
            self._deps.page_token_key,
            page_size_requested=request.page_size,
            page_token=request.page_token,
            query=("conflicts", tenant, int(request.state)),
            fetch=lambda after, limit: self._deps.decisions.list_conflicts(
                tenant, state, page_tokens.time_position(after), limit
            ),
            position_of=lambda last: [last.created_at.isoformat(), last.conflict_id],
        )
        return sync_pb2.ListConflictsResponse(conflicts=[_conflict(r) for r in records], next_page_token=token)

    async def ResolveConflict(
        self, request: sync_pb2.ResolveConflictRequest, context: Context
    ) -> sync_pb2.ResolveConflictResponse:
        """Settle one item; the resolver is the caller's identity."""
        identity = current_identity()
        resolution = _enum(Resolution, request.resolution, "resolution")
        record = await self._deps.decisions.resolve(
            identity.tenant_id, request.conflict_id, resolution, identity.agent_id or "anonymous", request.note
        )
        return sync_pb2.ResolveConflictResponse(conflict=_conflict(record))

    # --- episodes ---------------------------------------------------------------------

    async def AppendEpisodes(
        self, request: sync_pb2.AppendEpisodesRequest, context: Context
    ) -> sync_pb2.AppendEpisodesResponse:
        """Idempotent append."""
        identity = current_identity()
        meta = admit(request, identity, Channel.EPISODES, len(request.episodes), self._admission)
        records = []
        for index, episode in enumerate(request.episodes):
            episode.agent_id = episode.agent_id or identity.agent_id
            occur_time, bad_time = _item(
                to_datetime, episode.occur_time, episode.HasField("occur_time"), f"episodes[{index}].occur_time"
            )
            records.append(
                EpisodeRecord(
                    episode_id=episode.episode_id,
                    session_id=episode.session_id,
                    agent_id=identity.agent_id,
                    content=episode.content,
                    embedding=list(episode.embedding),
                    occur_time=occur_time,
                    data=episode.SerializeToString(deterministic=True),
                    claimed_tenant_id=episode.tenant_id,
                    metadata=episode.metadata if episode.HasField("metadata") else None,
                    problem=bad_time,
                )
            )
        ack = await self._deps.episodes.append(meta, identity.tenant_id, records)
        return sync_pb2.AppendEpisodesResponse(ack=self._ack(ack, Channel.EPISODES))

    async def ListEpisodes(
        self, request: sync_pb2.ListEpisodesRequest, context: Context
    ) -> sync_pb2.ListEpisodesResponse:
        """AIP-158 pages, oldest first."""
        query = EpisodeFilter(
            tenant_id=current_identity().tenant_id,
            session_id=request.session_id,
            agent_id=request.agent_id,
            start=to_datetime(request.start_time, request.HasField("start_time"), "start_time"),
            end=to_datetime(request.end_time, request.HasField("end_time"), "end_time"),
        )
        rows, token = await page_tokens.paginate(
            self._deps.page_token_key,
            page_size_requested=request.page_size,
            page_token=request.page_token,
            query=("episodes", query.tenant_id, query.session_id, query.agent_id, query.start, query.end),
            fetch=lambda after, limit: self._deps.episodes.page(query, page_tokens.time_position(after), limit),
            position_of=lambda last: [last.occur_time.isoformat(), last.episode_id],
        )
        return sync_pb2.ListEpisodesResponse(
            episodes=[memory_pb2.Episode.FromString(row.data) for row in rows], next_page_token=token
        )

    # --- edge registry ----------------------------------------------------------------

    async def AnnounceOffline(
        self, request: sync_pb2.AnnounceOfflineRequest, context: Context
    ) -> sync_pb2.AnnounceOfflineResponse:
        """Record a planned departure."""
        identity = current_identity()
        if not identity.agent_id:
            raise InvalidArgument("the caller has no agent identity", reason="NO_AGENT_ID")
        await self._deps.edges.depart(identity.agent_id, identity.tenant_id, request.reason)
        return sync_pb2.AnnounceOfflineResponse()

    async def ListEdges(self, request: sync_pb2.ListEdgesRequest, context: Context) -> sync_pb2.ListEdgesResponse:
        """The registry: operators (admin scope) see every tenant, others their own."""
        identity = current_identity()
        everyone = "admin" in identity.scopes or "*" in identity.scopes
        tenant = None if everyone else identity.tenant_id
        views, token = await page_tokens.paginate(
            self._deps.page_token_key,
            page_size_requested=request.page_size,
            page_token=request.page_token,
            query=("edges", tenant),
            fetch=lambda after, limit: self._deps.edges.page(
                tenant, str(after[0]) if after else "", limit, self._deps.clock()
            ),
            position_of=lambda last: [last.row.agent_id],
        )
        return sync_pb2.ListEdgesResponse(
            edges=[
                sync_pb2.EdgeInfo(
                    agent_id=v.row.agent_id,
                    region=v.row.region,
                    tenant_id=v.row.tenant_id,
                    state=sync_pb2.EdgeState.ValueType(v.state),
                    last_sync_time=to_timestamp(v.row.last_sync_at),
                    last_seen_time=to_timestamp(v.row.last_seen_at),
                    incarnation_id=v.row.incarnation_id,
                    incarnation_start_time=to_timestamp(v.row.incarnation_started_at),
                    incarnation_count=v.row.incarnation_count,
                )
                for v in views
            ],
            next_page_token=token,
        )


def _item(convert: Callable[..., _T | None], *arguments: Any) -> tuple[_T | None, str]:
    """(value, "") when one item's field converts, (None, message naming the field) when it does not.

    Central judges batch items one by one: a value without a stored form (a
    timestamp out of range, a payload that is not JSON) makes that item an
    ``ItemFailure`` in the ack, while the rest of the batch is applied.
    """
    try:
        return convert(*arguments), ""
    except InvalidArgument as error:
        return None, error.message


def _conflict(record: ConflictRecord) -> sync_pb2.Conflict:
    return sync_pb2.Conflict(
        conflict_id=record.conflict_id,
        edge_decision=decision_pb2.Decision.FromString(record.edge_decision),
        central_decision=decision_pb2.Decision.FromString(record.central_decision),
        state=sync_pb2.ConflictState.ValueType(record.state),
        resolution=sync_pb2.Resolution.ValueType(record.resolution),
        resolved_by=record.resolved_by,
        resolve_time=to_timestamp(record.resolved_at),
        create_time=to_timestamp(record.created_at),
        note=record.note,
    )


def _enum(kind: type[_E], value: int, field: str) -> _E | None:
    """The domain enum member for a wire value; None for 0 (unset); INVALID_ARGUMENT for unknown numbers."""
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise InvalidArgument.for_field(field, f"{value} is not a known value") from None


def _session_item(
    item: memory_pb2.Session | sync_pb2.SessionAppend, field: str, state: struct_pb2.Struct, state_field: str
) -> dict[str, Any]:
    """The fields a whole session and an append share, for their domain records."""
    data, computed_checksum = encoded_with_checksum(item)
    return {
        "session_id": item.session_id,
        "user_id": item.user_id,
        "last_activity": to_datetime(
            item.last_activity_time, item.HasField("last_activity_time"), f"{field}.last_activity_time"
        ),
        "checksum": item.checksum,
        "computed_checksum": computed_checksum,
        "claimed_tenant_id": item.tenant_id,
        "data": data,
        "problem": limits.problem_of(
            limits.validate_session_item,
            session_id=item.session_id,
            user_id=item.user_id,
            messages=item.messages,
            state=state,
            field=field,
            state_field=state_field,
        ),
    }


def encoded_with_checksum(item: memory_pb2.Session | sync_pb2.SessionAppend) -> tuple[bytes, str]:
    """The item's deterministic encoding (stored as is) and ``session_checksum(item)``, without copying it.

    ``session_checksum`` hashes the encoding with ``checksum`` and ``tenant_id``
    cleared; it copies the message to clear them. The item here belongs to the
    request being handled, so they are cleared in place and put back, and when
    both are empty the stored encoding is the canonical one already.
    """
    data = item.SerializeToString(deterministic=True)
    checksum, tenant_id = item.checksum, item.tenant_id
    if not checksum and not tenant_id:
        return data, hashlib.sha256(data).hexdigest()
    item.checksum = ""
    item.tenant_id = ""
    try:
        canonical = item.SerializeToString(deterministic=True)
    finally:
        item.checksum = checksum
        item.tenant_id = tenant_id
    return data, hashlib.sha256(canonical).hexdigest()


_Prepared = TypeVar("_Prepared")
_Request = TypeVar("_Request")


async def read_ahead(
    requests: AsyncIterator[_Request], prepare: Callable[[_Request], _Prepared]
) -> AsyncIterator[_Prepared]:
    """``prepare(request)`` for every request of a stream, in order, one request ahead of the caller.

    The next request is read and prepared (in a worker thread, with the
    caller's context: the identity the interceptors set) while the caller
    handles the current one; what ``prepare`` raised is raised when the caller
    gets to that request. At most one request is read ahead.
    """

    async def following() -> tuple[bool, _Prepared | None]:
        try:
            request = await anext(requests)
        except StopAsyncIteration:
            return False, None
        return True, await asyncio.to_thread(prepare, request)

    pending = asyncio.ensure_future(following())
    try:
        while True:
            more, prepared = await pending
            if not more:
                return
            pending = asyncio.ensure_future(following())
            yield cast("_Prepared", prepared)
    finally:
        if not pending.done():
            pending.cancel()
            # A request the caller will never get: its outcome (even an error) is of no interest.
            pending.add_done_callback(lambda task: task.cancelled() or task.exception())
