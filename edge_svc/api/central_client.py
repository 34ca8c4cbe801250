"""The gRPC adapter of the ``Central`` port: everything the edge asks of central.

The channel comes from ``aeterna_client.channel.open_channel`` with the
settings of a ``CentralLink`` (``deps.central_link`` derives them once from the
sync, tls, edge, telemetry and centralServer sections: TLS, pinning and
credentials live there) and every call carries its ``metadata`` and a
deadline. Batches are signed here, at send time, with a fresh ``sent_time`` on
every attempt, so that a batch that waited offline for an hour is still inside
central's freshness window. Every batch
header and checkpoint request carries the outbox's incarnation id, so central
keeps the sequences of a re-provisioned edge (a new data directory, the same
agent id) apart from those of its previous incarnation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aeterna_client.channel import ClientSettings, open_channel
from aeterna_shared.errors import (
    AeternaError,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from aeterna_shared.wire.canonical import sign_batch
from edge_svc import trace_context
from edge_svc.api import codec
from edge_svc.records import (
    Ack,
    Channel,
    Checkpoints,
    DecisionRecord,
    EpisodeRecord,
    OutboxBatch,
    PolicyBundleRecord,
    ScoredRecord,
    SessionRecord,
    VectorRecord,
    now_ns,
)

CHANNELS = {
    Channel.SESSIONS: sync_pb2.SYNC_CHANNEL_SESSIONS,
    Channel.VECTORS: sync_pb2.SYNC_CHANNEL_VECTORS,
    Channel.DECISIONS: sync_pb2.SYNC_CHANNEL_DECISIONS,
    Channel.EPISODES: sync_pb2.SYNC_CHANNEL_EPISODES,
}
_FROM_CHANNEL = {value: key for key, value in CHANNELS.items()}

_log = logging.getLogger(__name__)


# Codes with which central refuses a batch for what it holds: sending it again can never succeed.
_REFUSALS: dict[grpc.StatusCode, type[AeternaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
}


def refusal_of(error: aio.AioRpcError) -> AeternaError | None:
    """Central's refusal of a batch as a domain error (reason from its ``ErrorInfo``), or None.

    The sync engine dead-letters a batch that central refuses this way after
    its retries; any other failure (UNAVAILABLE, a deadline, RESOURCE_EXHAUSTED,
    an authentication problem) is the link's or the configuration's, not the
    batch's, and the batch stays queued.
    """
    kind = _REFUSALS.get(error.code())
    if kind is None:
        return None
    reason = _details(error, error_details_pb2.ErrorInfo)
    return kind(
        f"central refused the batch: {error.code().name} {error.details()}",
        reason=reason.reason if reason is not None and reason.reason else error.code().name,
    )


def busy_of(error: aio.AioRpcError) -> ResourceExhausted | None:
    """Central's "not now" (RESOURCE_EXHAUSTED, e.g. ``INGEST_BUSY``) with the delay its RetryInfo asks for, or None.

    The batch stays queued, and the sync engine waits at least ``retry_after``
    before it sends again (a central shedding load is not hammered by backoffs
    shorter than the one it named).
    """
    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    info = _details(error, error_details_pb2.ErrorInfo)
    retry = _details(error, error_details_pb2.RetryInfo)
    return ResourceExhausted(
        f"central is busy: {error.details()}",
        reason=info.reason if info is not None and info.reason else "RESOURCE_EXHAUSTED",
        retry_after=retry.retry_delay.ToTimedelta().total_seconds() if retry is not None else 1.0,
    )


def failure_of(error: aio.AioRpcError) -> BaseException:
    """What ``send`` raises for a failed call: a refusal, a busy central, else the gRPC error itself."""
    return refusal_of(error) or busy_of(error) or error


_Detail = TypeVar("_Detail", error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo)


def _details(error: aio.AioRpcError, kind: type[_Detail]) -> _Detail | None:
    """The first ``kind`` among the ``google.rpc.Status`` details of a failed call, or None."""
    with contextlib.suppress(ValueError):
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            found = kind()
            if detail.Unpack(found):
                return found
    return None


def _ack(ack: sync_pb2.BatchAck) -> Ack:
    return Ack(
        sequence=ack.sequence,
        batch_id=ack.batch_id,
        processed=ack.processed,
        failed=ack.failed,
        checkpoint=ack.checkpoint,
        failures=tuple((f.item_id, f.reason, f.message) for f in ack.failures),
    )


@dataclass(frozen=True)
class CentralLink:
    """What ``GrpcCentral`` needs: where central is, how to reach it, who this edge is and how it signs."""

    target: str
    """``sync.centralServer``'s gRPC target."""
    settings: ClientSettings
    """TLS, pins, credentials, compression and deadlines of the channel (``settings.unary_timeout`` is
    ``sync.centralServer.timeout``, the deadline of every unary call)."""
    metadata: tuple[tuple[str, str], ...]
    """Development identity headers sent with every call."""
    signing_key: bytes
    """The edge's batch-signing key (``sync.signing``)."""
    agent_id: str
    """``edge.agentId``, named in every batch header."""
    region: str
    """``edge.region``, named in every batch header and excluded from central's vector search."""
    failure_threshold: int
    """``centralServer.healthCheck.failureThreshold``: silent health checks in a row before a new connection."""


class GrpcCentral:
    """Central, reached over one long-lived channel."""

    def __init__(self, link: CentralLink, *, incarnation_id: str = "") -> None:
        """``incarnation_id`` is the outbox's (``Outbox.incarnation_id``); empty for an edge without one."""
        self._incarnation = incarnation_id
        self._metadata = link.metadata
        self._target = link.target
        self._settings = link.settings
        self._timeout = link.settings.unary_timeout
        self._key = link.signing_key
        self._agent_id = link.agent_id
        self._region = link.region
        self._threshold = link.failure_threshold
        self._silent_checks = 0
        self._retired: set[asyncio.Task[None]] = set()
        self._open()

    def _open(self) -> None:
        self._channel: aio.Channel = open_channel(self._target, self._settings)
        self._sync = sync_pb2_grpc.SyncServiceStub(self._channel)
        self._policy = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _reopen(self) -> None:
        """Replace a connection that looks established but no longer answers (half-open: the peer or a
        middlebox vanished without FIN/RST). gRPC would notice only after its keepalive (30 s + 20 s);
        until then every call on it ends by deadline although central may be reachable on a new one."""
        old = self._channel
        _log.info("central did not answer %d health checks in time: opening a new connection", self._threshold)
        self._open()
        task = asyncio.get_running_loop().create_task(old.close())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    def _header(self, batch: OutboxBatch, floor: int) -> sync_pb2.BatchHeader:
        return sync_pb2.BatchHeader(
            batch_id=batch.batch_id,
            sequence=batch.sequence,
            floor_sequence=floor,
            agent_id=self._agent_id,
            region=self._region,
            sent_time=codec.ts(now_ns()),
            incarnation_id=self._incarnation,
        )

    async def check_health(self, deadline_seconds: float) -> bool:
        """grpc.health.v1 Check of the whole server."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=deadline_seconds)
        except aio.AioRpcError as error:
            # Checks that end by deadline (not refused: the connection looks alive, nothing answers):
            # after failureThreshold of them in a row, open a new connection rather than wait for
            # keepalive (half-open) or gRPC's 20 s connect timeout (a stalled handshake) to give up.
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._silent_checks += 1
                if self._silent_checks >= self._threshold:
                    self._silent_checks = 0
                    self._reopen()
            else:
                self._silent_checks = 0
            return False
        self._silent_checks = 0
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def checkpoints(self, held: Mapping[Channel, Sequence[str]]) -> Checkpoints:
        """GetSyncCheckpoint of this edge's incarnation, naming the ``held`` batches (central's stored acks)."""
        channel_of = {batch_id: channel for channel, ids in held.items() for batch_id in ids}
        reply = await self._sync.GetSyncCheckpoint(
            sync_pb2.GetSyncCheckpointRequest(incarnation_id=self._incarnation, held_batch_ids=list(channel_of)),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        acks: dict[Channel, list[Ack]] = {}
        for ack in reply.acks:
            if ack.batch_id in channel_of:  # central answers only what was named
                acks.setdefault(channel_of[ack.batch_id], []).append(_ack(ack))
        sequences = {_FROM_CHANNEL[c.channel]: int(c.sequence) for c in reply.checkpoints if c.channel in _FROM_CHANNEL}
        return Checkpoints(sequences, acks)

    async def send(self, channel: Channel, batches: Sequence[OutboxBatch]) -> list[Ack]:
        """Sessions and vectors pipeline on a bidi stream; decisions and episodes go one call per batch.

        ``batches`` are the channel's oldest pending batches, in order, so the
        first one's sequence is the floor: nothing below it is still queued here.
        """
        if not batches:
            return []
        floor = batches[0].sequence
        if channel is Channel.SESSIONS:
            # In the trace of the writes that made these sessions dirty (``edge_svc.trace_context``).
            items = [item for batch in batches for item in batch.items]
            with trace_context.sending(
                "aeterna.edge.sync sessions",
                items,
                **{"aeterna.sync.batches": len(batches), "aeterna.sync.items": len(items)},
            ):
                requests = [self._sessions_request(b, floor) for b in batches]
                return await self._stream(self._sync.SyncSessions, requests)
        if channel is Channel.VECTORS:
            return await self._stream(self._sync.SyncVectors, [self._vectors_request(b, floor) for b in batches])
        acks: list[Ack] = []
        for batch in batches:
            try:
                if channel is Channel.DECISIONS:
                    reply: Any = await self._sync.ReplayDecisions(
                        self._decisions_request(batch, floor), metadata=self._metadata, timeout=self._timeout
                    )
                else:
                    reply = await self._sync.AppendEpisodes(
                        self._episodes_request(batch, floor), metadata=self._metadata, timeout=self._timeout
                    )
            except aio.AioRpcError as error:
                if acks:
                    return acks
                raise failure_of(error) from None
            acks.append(_ack(reply.ack))
        return acks

    async def _stream(self, method: Any, requests: list[Any]) -> list[Ack]:
        # The requests go as an iterator, written by grpc's own task while the acks are read. Not with
        # ``call.write``: through client interceptors that proxies writes via a queue, and when central
        # ends the call before ``done_writing`` (a refusal, a busy central) grpc's writer task waits on
        # that queue for ever, to be destroyed pending at the next garbage collection.
        call = method(iter(requests), metadata=self._metadata, timeout=self._timeout * max(1, len(requests) // 8 + 1))
        acks: list[Ack] = []
        try:
            while len(acks) < len(requests):
                reply = await call.read()
                if reply is aio.EOF:
                    break
                acks.append(_ack(reply.ack))
            if len(acks) == len(requests):
                # Read the end of the stream as well: the call ends OK on both sides (its spans and
                # metrics say so) instead of being cancelled under central's last write.
                await call.read()
        except aio.AioRpcError as error:
            if not acks:
                raise failure_of(error) from None
        finally:
            call.cancel()
        return acks

    def _sessions_request(self, batch: OutboxBatch, floor: int) -> sync_pb2.SyncSessionsRequest:
        sessions, appends = codec.session_changes_to_proto(batch.items)
        request = sync_pb2.SyncSessionsRequest(header=self._header(batch, floor), sessions=sessions, appends=appends)
        sign_batch(request, self._key)
        return request

    def _vectors_request(self, batch: OutboxBatch, floor: int) -> sync_pb2.SyncVectorsRequest:
        request = sync_pb2.SyncVectorsRequest(
            header=self._header(batch, floor),
            vectors=[codec.vector_to_proto(VectorRecord.from_json(item)) for item in batch.items],
        )
        sign_batch(request, self._key)
        return request

    def _decisions_request(self, batch: OutboxBatch, floor: int) -> sync_pb2.ReplayDecisionsRequest:
        request = sync_pb2.ReplayDecisionsRequest(
            header=self._header(batch, floor),
            decisions=[codec.decision_to_proto(DecisionRecord.from_json(item)) for item in batch.items],
        )
        sign_batch(request, self._key)
        return request

    def _episodes_request(self, batch: OutboxBatch, floor: int) -> sync_pb2.AppendEpisodesRequest:
        request = sync_pb2.AppendEpisodesRequest(
            header=self._header(batch, floor),
            episodes=[codec.episode_to_proto(EpisodeRecord.from_json(item)) for item in batch.items],
        )
        sign_batch(request, self._key)
        return request

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """SyncService.GetSession; None on NOT_FOUND, Unavailable when central cannot answer."""
        try:
            reply = await self._sync.GetSession(
                sync_pb2.GetSessionRequest(session_id=session_id), metadata=self._metadata, timeout=self._timeout
            )
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(
                f"session {session_id!r} is not cached at this edge and central could not be read: {error.code().name}",
                reason="CENTRAL_UNREACHABLE",
            ) from None
        return codec.session_from_proto(reply.session)

    async def search_vectors(
        self, embedding: Sequence[float], limit: int, score_threshold: float, exclude_ids: Sequence[str]
    ) -> list[ScoredRecord]:
        """SyncService.SearchVectors excluding this region and the given ids."""
        reply = await self._sync.SearchVectors(
            sync_pb2.SearchVectorsRequest(
                embedding=list(embedding),
                limit=limit,
                score_threshold=score_threshold,
                filter=sync_pb2.VectorFilter(exclude_regions=[self._region], exclude_vector_ids=list(exclude_ids)),
            ),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return [ScoredRecord(codec.vector_from_proto(hit.vector), hit.score, "central") for hit in reply.results]

    async def watch_policies(self, known_version: int) -> AsyncIterator[PolicyBundleRecord]:
        """PolicyService.WatchPolicies (no deadline: the stream is long-lived on purpose)."""
        call = self._policy.WatchPolicies(
            policy_pb2.WatchPoliciesRequest(known_version=known_version), metadata=self._metadata
        )
        try:
            async for reply in call:
                yield codec.bundle_from_proto(reply.bundle)
        finally:
            call.cancel()

    async def announce_offline(self, reason: str) -> None:
        """SyncService.AnnounceOffline."""
        await self._sync.AnnounceOffline(
            sync_pb2.AnnounceOfflineRequest(reason=reason), metadata=self._metadata, timeout=min(self._timeout, 5.0)
        )

    async def close(self) -> None:
        """Close the channel (and any replaced one still closing)."""
        await self._channel.close()
        for task in list(self._retired):
            with contextlib.suppress(Exception):
                await task
