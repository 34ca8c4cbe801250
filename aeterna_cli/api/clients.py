"""Blocking clients for the demo and ``aeterna status``, on ``aeterna_client.open_channel``.

They translate between protobuf and plain Python values so that the code that
tells the story (``aeterna_cli.demo``) never touches generated types. Each
client drives its channel on a private event loop, so blocking callers use the
same client stack (TLS, pins, credentials, deadlines) as the edge.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2, policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import json_format
from grpc import aio

from aeterna_client.channel import ClientSettings, open_channel

T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    """What an edge decided."""

    effect: str
    policy_version: int
    offline: bool
    reasons: tuple[str, ...]
    decision_id: str


@dataclass(frozen=True)
class SearchResult:
    """Where a vector search's hits came from."""

    ids: tuple[str, ...]
    local_count: int
    central_count: int
    partial: bool


@dataclass(frozen=True)
class EdgeStatus:
    """The parts of GetEdgeStatus the CLI shows."""

    agent_id: str
    region: str
    online: bool
    consecutive_failures: int
    policy_version: int
    pending_items: dict[str, int]
    dead_letters: dict[str, int]
    local_sessions: int
    local_vectors: int


def _channel_name(channel: sync_pb2.SyncChannel.ValueType) -> str:
    return sync_pb2.SyncChannel.Name(channel).removeprefix("SYNC_CHANNEL_").lower()


class BlockingChannel:
    """An ``open_channel`` channel used from blocking code: each call runs on a private event loop."""

    def __init__(self, target: str, settings: ClientSettings) -> None:
        self.target = target
        self.timeout = settings.unary_timeout
        """Every call's deadline: the command's ``--timeout`` (``ClientSettings.unary_timeout``)."""
        self._loop = asyncio.new_event_loop()
        self.channel: aio.Channel = self._loop.run_until_complete(self._open(target, settings))

    @staticmethod
    async def _open(target: str, settings: ClientSettings) -> aio.Channel:
        return open_channel(target, settings)

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make the call (a stub method bound to its request) and wait for its result."""

        async def calling() -> T:
            return await call()

        return self._loop.run_until_complete(calling())

    def close(self) -> None:
        """Close the channel and the loop."""
        self._loop.run_until_complete(self.channel.close())
        self._loop.close()


def development_settings(agent_id: str, tenant_id: str = "default") -> ClientSettings:
    """Plaintext, gzip, development identity headers: how the CLI reaches local processes today."""
    return ClientSettings(agent_id=agent_id, tenant_id=tenant_id, compression="gzip")


class EdgeClient(BlockingChannel):
    """An agent's view of one edge."""

    def __init__(
        self,
        target: str,
        *,
        agent_id: str = "demo-agent",
        tenant_id: str = "default",
        settings: ClientSettings | None = None,
    ) -> None:
        super().__init__(target, settings or development_settings(agent_id, tenant_id))
        self._stub = edge_pb2_grpc.EdgeServiceStub(self.channel)

    def set_working(self, key: str, value: Any, ttl_seconds: float) -> None:
        """Store a working-memory value."""
        request = edge_pb2.SetWorkingMemoryRequest(key=key)
        json_format.ParseDict(value, request.value)
        request.ttl.FromNanoseconds(int(ttl_seconds * 1e9))
        self.run(lambda: self._stub.SetWorkingMemory(request, timeout=self.timeout))

    def get_working(self, key: str) -> Any | None:
        """Read a working-memory value; None once it expired."""
        try:
            response = self.run(
                lambda: self._stub.GetWorkingMemory(edge_pb2.GetWorkingMemoryRequest(key=key), timeout=self.timeout)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return json_format.MessageToDict(response.value)

    def append_messages(self, session_id: str, user_id: str, texts: Sequence[str], state: dict[str, Any]) -> str:
        """Append user turns to a session; returns its checksum."""
        request = edge_pb2.AppendSessionMessagesRequest(session_id=session_id, user_id=user_id)
        for text in texts:
            request.messages.add(role="user", content=text)
        request.state_patch.update(state)
        response = self.run(lambda: self._stub.AppendSessionMessages(request, timeout=self.timeout))
        return response.session.checksum

    def get_session(self, session_id: str) -> tuple[dict[str, Any], str] | None:
        """A session as a dict and where it came from (local or central); None when absent."""
        try:
            response = self.run(
                lambda: self._stub.GetSession(edge_pb2.GetSessionRequest(session_id=session_id), timeout=self.timeout)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        source = edge_pb2.SessionSource.Name(response.source).removeprefix("SESSION_SOURCE_").lower()
        return json_format.MessageToDict(response.session), source

    def raw_session(self, session_id: str) -> memory_pb2.Session:
        """The session message itself, for measuring its wire size."""
        return self.run(
            lambda: self._stub.GetSession(edge_pb2.GetSessionRequest(session_id=session_id), timeout=self.timeout)
        ).session

    def flush(self) -> tuple[int, int, int]:
        """Sync now: (batches acked, items acked, items still pending)."""
        response = self.run(lambda: self._stub.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60))
        return response.batches_acked, response.items_acked, response.items_pending

    def authorize(self, principal: str, action: str, resource: str, context: dict[str, Any] | None = None) -> Decision:
        """Ask the edge's Cedar agent."""
        request = edge_pb2.AuthorizeRequest(principal=principal, action=action, resource=resource)
        request.context.update(context or {})
        response = self.run(lambda: self._stub.Authorize(request, timeout=self.timeout))
        return Decision(
            effect=decision_pb2.Effect.Name(response.effect).removeprefix("EFFECT_"),
            policy_version=response.policy_version,
            offline=response.offline,
            reasons=tuple(response.determining_policies),
            decision_id=response.decision_id,
        )

    def upsert_vectors(self, vectors: Iterable[tuple[str, Sequence[float], dict[str, Any]]]) -> int:
        """Write vectors (id, values, payload) into the edge's subset."""
        request = edge_pb2.UpsertVectorsRequest()
        for vector_id, values, payload in vectors:
            vector = request.vectors.add(vector_id=vector_id, values=list(values))
            vector.payload.update(payload)
        return self.run(lambda: self._stub.UpsertVectors(request, timeout=self.timeout)).upserted

    def search(self, embedding: Sequence[float], limit: int, threshold: float) -> SearchResult:
        """Search the edge (which may ask central)."""
        response = self.run(
            lambda: self._stub.SearchVectors(
                edge_pb2.SearchVectorsRequest(embedding=list(embedding), limit=limit, score_threshold=threshold),
                timeout=self.timeout,
            )
        )
        return SearchResult(
            ids=tuple(hit.vector.vector_id for hit in response.results),
            local_count=response.local_count,
            central_count=response.central_count,
            partial=response.partial,
        )

    def status(self) -> EdgeStatus:
        """The edge's status."""
        response = self.run(lambda: self._stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=self.timeout))
        return EdgeStatus(
            agent_id=response.agent_id,
            region=response.region,
            online=response.link_state == edge_pb2.LINK_STATE_ONLINE,
            consecutive_failures=response.consecutive_failures,
            policy_version=response.policy_version,
            pending_items={_channel_name(q.channel): q.pending_items for q in response.queues},
            dead_letters={_channel_name(q.channel): q.dead_letters for q in response.queues},
            local_sessions=response.local_sessions,
            local_vectors=response.local_vectors,
        )


@dataclass(frozen=True)
class Conflict:
    """A decision conflict waiting for (or past) manual review."""

    conflict_id: str
    resource: str
    edge_effect: str
    central_effect: str
    state: str


class CentralClient(BlockingChannel):
    """An operator's view of central."""

    def __init__(self, target: str, *, operator: str = "demo-operator", settings: ClientSettings | None = None) -> None:
        super().__init__(target, settings or development_settings(operator))
        self._sync = sync_pb2_grpc.SyncServiceStub(self.channel)
        self._policy = policy_pb2_grpc.PolicyServiceStub(self.channel)

    def publish(self, policies: dict[str, str], entities: list[dict[str, Any]] | None = None) -> int:
        """Publish a bundle; returns its version."""
        request = policy_pb2.PublishPoliciesRequest(entities_json=json.dumps(entities or []))
        for policy_id, text in policies.items():
            request.policies.add(policy_id=policy_id, text=text)
        return self.run(lambda: self._policy.PublishPolicies(request, timeout=self.timeout)).bundle.version

    def has_session(self, session_id: str) -> bool:
        """Whether central holds the session."""
        try:
            self.run(
                lambda: self._sync.GetSession(sync_pb2.GetSessionRequest(session_id=session_id), timeout=self.timeout)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def conflicts(self, pending_only: bool = True) -> list[Conflict]:
        """Conflicts flagged for manual review."""
        state = sync_pb2.CONFLICT_STATE_PENDING if pending_only else sync_pb2.CONFLICT_STATE_UNSPECIFIED
        response = self.run(
            lambda: self._sync.ListConflicts(
                sync_pb2.ListConflictsRequest(state=state, page_size=100), timeout=self.timeout
            )
        )
        return [
            Conflict(
                conflict_id=item.conflict_id,
                resource=item.edge_decision.resource,
                edge_effect=decision_pb2.Effect.Name(item.edge_decision.effect).removeprefix("EFFECT_"),
                central_effect=decision_pb2.Effect.Name(item.central_decision.effect).removeprefix("EFFECT_"),
                state=sync_pb2.ConflictState.Name(item.state).removeprefix("CONFLICT_STATE_"),
            )
            for item in response.conflicts
        ]

    def resolve(self, conflict_id: str, keep_edge: bool, note: str) -> str:
        """Settle a conflict; returns who resolved it."""
        resolution = sync_pb2.RESOLUTION_KEEP_EDGE if keep_edge else sync_pb2.RESOLUTION_KEEP_CENTRAL
        response = self.run(
            lambda: self._sync.ResolveConflict(
                sync_pb2.ResolveConflictRequest(conflict_id=conflict_id, resolution=resolution, note=note),
                timeout=self.timeout,
            )
        )
        return response.conflict.resolved_by

    def policy_version(self) -> int:
        """The current policy bundle version; 0 when none was published."""
        try:
            response = self.run(
                lambda: self._policy.GetPolicyBundle(policy_pb2.GetPolicyBundleRequest(version=0), timeout=self.timeout)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return response.bundle.version

    def edges(self) -> list[dict[str, Any]]:
        """Every registered edge: agent id, region, state and incarnation (more than one: re-provisioned)."""
        response = self.run(
            lambda: self._sync.ListEdges(sync_pb2.ListEdgesRequest(page_size=100), timeout=self.timeout)
        )
        return [
            {
                "agentId": edge.agent_id,
                "region": edge.region,
                "state": sync_pb2.EdgeState.Name(edge.state).removeprefix("EDGE_STATE_").lower(),
                "incarnationId": edge.incarnation_id,
                "incarnationCount": edge.incarnation_count,
            }
            for edge in response.edges
        ]


def wire_sizes(sessions: Sequence[memory_pb2.Session]) -> tuple[int, int, int]:
    """(raw JSON bytes, protobuf bytes, protobuf+gzip bytes) of a batch of these sessions."""
    request = sync_pb2.SyncSessionsRequest(sessions=sessions)
    as_json = json.dumps([json_format.MessageToDict(s) for s in sessions]).encode()
    as_proto = request.SerializeToString()
    return len(as_json), len(as_proto), len(gzip.compress(as_proto))


async def fetch_status(target: str, deadline_seconds: float, settings: ClientSettings) -> dict[str, Any]:
    """An edge's ``GetEdgeStatus`` as a JSON-ready dict (camelCase keys, enum names shortened)."""
    async with open_channel(target, settings) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        reply = await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=deadline_seconds)
    status: dict[str, Any] = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
    status["linkState"] = edge_pb2.LinkState.Name(reply.link_state).removeprefix("LINK_STATE_")
    for queue, raw in zip(status.get("queues", []), reply.queues, strict=True):
        queue["channel"] = _channel_name(raw.channel)
    return status


class StatusUnavailable(Exception):
    """The target answered neither as an edge nor as central; ``error`` is the failed call."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error


def status_of(target: str, settings: ClientSettings) -> dict[str, Any]:
    """The status of an edge, or of central when the target has no EdgeService.

    A central answers the edge's GetEdgeStatus with UNIMPLEMENTED; that is how
    one command tells the two apart without asking the operator. ``settings``
    are the command's connection (``aeterna_cli.connection.resolve``); each
    call's deadline is ``settings.unary_timeout``.
    """
    try:
        try:
            status = asyncio.run(fetch_status(target, settings.unary_timeout, settings))
            status["role"] = "edge"
            return status
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        client = CentralClient(target, settings=settings)
        try:
            edges = client.edges()
            return {
                "role": "central",
                "target": target,
                "policyVersion": client.policy_version(),
                "pendingConflicts": len(client.conflicts()),
                "edges": edges,
            }
        finally:
            client.close()
    except grpc.RpcError as error:
        raise StatusUnavailable(error) from None
