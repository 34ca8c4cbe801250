"""The published service config: what it names, and what it does on a real channel to a real server.

The servers here are real ``grpc.aio`` servers built on the generated servicer
bases of the project's services; they fail or hang on purpose, count the
attempts they receive and record the ``grpc-previous-rpc-attempts`` header
gRPC adds to a retry. The clients are ``open_channel`` (and, for the edge, its
real ``GrpcCentral`` adapter), so what is checked is what the project's own
clients do.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2

from aeterna_cli.api.clients import status_of
from aeterna_client import service_config
from aeterna_client.channel import ClientSettings, open_channel
from edge_svc.api.central_client import GrpcCentral
from edge_svc.deps import central_link
from edge_svc.records import Channel
from tests.interceptors.conftest import make_config
from tests.support.tls import TlsMaterial

SERVICES: list[ServiceDescriptor] = [
    edge_pb2.DESCRIPTOR.services_by_name["EdgeService"],
    sync_pb2.DESCRIPTOR.services_by_name["SyncService"],
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
METHODS: dict[str, MethodDescriptor] = {
    f"{service.full_name}/{method.name}": method for service in SERVICES for method in service.methods
}
IDEMPOTENT_LEVELS = {descriptor_pb2.MethodOptions.IDEMPOTENT, descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS}
NOT_IDEMPOTENT = {
    "aeterna.edge.v1.EdgeService/Authorize",  # records a decision under a new decision_id per call
    "aeterna.edge.v1.EdgeService/AppendSessionMessages",  # appends
    "aeterna.edge.v1.EdgeService/AppendEpisode",  # an empty episode_id gets a new UUID per attempt
    "aeterna.edge.v1.EdgeService/FlushSync",  # UNAVAILABLE while offline on purpose
    "aeterna.policy.v1.PolicyService/PublishPolicies",  # a new bundle version per call
    "aeterna.sync.v1.SyncService/SyncSessions",  # idempotent by batch_id, but the edge's outbox resends
    "aeterna.sync.v1.SyncService/SyncVectors",  # idempotent by batch_id, but the edge's outbox resends
}
PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"


def _published() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(service_config.service_config_json())
    return document


def _method_configs() -> dict[str, dict[str, Any]]:
    """Full method name -> its methodConfig entry in the packaged JSON."""
    configs: dict[str, dict[str, Any]] = {}
    for entry in _published()["methodConfig"]:
        for name in entry["name"]:
            full = f"{name['service']}/{name['method']}"
            assert full not in configs, f"{full} is named twice (gRPC refuses such a config)"
            configs[full] = entry
    return configs


# --- the JSON ----------------------------------------------------------------------------------


def test_the_packaged_json_is_generated_from_the_rules() -> None:
    assert service_config.PATH.read_text(encoding="utf-8") == service_config.render(), (
        "aeterna_client/service_config.json is stale: python -m aeterna_client.service_config --write"
    )
    assert service_config.service_config_json() == service_config.render()


def test_every_name_is_a_method_of_the_generated_descriptors_and_every_method_is_named() -> None:
    configs = _method_configs()
    unknown = sorted(set(configs) - set(METHODS))
    assert not unknown, f"the service config names methods the protos do not have (renamed?): {unknown}"
    missing = sorted(set(METHODS) - set(configs))
    assert not missing, f"decide retry and timeout of the new methods in aeterna_client/service_config.py: {missing}"


def test_only_idempotent_methods_have_a_retry_policy() -> None:
    configs = _method_configs()
    retried = {name for name, entry in configs.items() if "retryPolicy" in entry}
    for name in retried:
        level = METHODS[name].GetOptions().idempotency_level
        assert level in IDEMPOTENT_LEVELS or name in service_config.IDEMPOTENT_BY_DESIGN, (
            f"{name} is retried but neither its proto nor IDEMPOTENT_BY_DESIGN says it is idempotent"
        )
    unknown_level = {
        name
        for name, method in METHODS.items()
        if method.GetOptions().idempotency_level not in IDEMPOTENT_LEVELS
        and name not in service_config.IDEMPOTENT_BY_DESIGN
    }
    assert unknown_level, "the protos mark every method idempotent: check the descriptor options"
    assert not (retried & unknown_level)
    assert not (retried & NOT_IDEMPOTENT)
    assert set(configs) >= NOT_IDEMPOTENT
    assert set(service_config.NOT_RETRIED_DESPITE_PROTO) <= NOT_IDEMPOTENT
    for entry in configs.values():
        assert "waitForReady" not in entry  # calls fail fast while the server is unreachable
        if "retryPolicy" in entry:
            # RESOURCE_EXHAUSTED carries RetryInfo, which gRPC's retry ignores: retrying it would storm a limit.
            assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert _published()["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}


def test_streams_and_the_methods_the_edge_calls_at_central_have_no_timeout() -> None:
    configs = _method_configs()
    streams = {name for name, m in METHODS.items() if m.client_streaming or m.server_streaming}
    assert streams == {
        "aeterna.sync.v1.SyncService/SyncSessions",
        "aeterna.sync.v1.SyncService/SyncVectors",
        "aeterna.policy.v1.PolicyService/WatchPolicies",
        "grpc.health.v1.Health/Watch",
    }
    edge_calls = {
        "aeterna.sync.v1.SyncService/GetSyncCheckpoint",
        "aeterna.sync.v1.SyncService/ReplayDecisions",
        "aeterna.sync.v1.SyncService/AppendEpisodes",
        "aeterna.sync.v1.SyncService/GetSession",
        "aeterna.sync.v1.SyncService/SearchVectors",
        "aeterna.sync.v1.SyncService/AnnounceOffline",
        "grpc.health.v1.Health/Check",
    }
    for name in streams | edge_calls:
        assert "timeout" not in configs[name], name
    assert configs["aeterna.edge.v1.EdgeService/GetEdgeStatus"]["timeout"] == "10s"
    assert service_config.method_timeouts()["/aeterna.edge.v1.EdgeService/GetEdgeStatus"] == 10.0


def test_the_table_in_docs_clients_md_says_what_the_json_says() -> None:
    """docs/clients.md lists every method once, with the retry and timeout the JSON gives it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "clients.md").read_text(encoding="utf-8")
    section = text.split("## Service config: retries and timeouts", 1)[1].split("\n## ", 1)[0]
    services = {service.name: service.full_name for service in SERVICES}
    documented: dict[str, tuple[bool, str | None]] = {}
    for row in re.findall(r"^\| (.+?) \| (yes|\*\*no\*\*) \| (\d+ s|none) \|$", section, flags=re.MULTILINE):
        cell, retried, timeout = row
        for part in cell.split("; "):
            short, _, methods = part.partition(" ")
            for method in re.findall(r"`(\w+)`", methods):
                name = f"{services[short]}/{method}"
                assert name not in documented, f"{name} is in the table twice"
                documented[name] = (retried == "yes", None if timeout == "none" else timeout.replace(" ", ""))
    published = {name: ("retryPolicy" in entry, entry.get("timeout")) for name, entry in _method_configs().items()}
    assert documented == published


# --- a real server ---------------------------------------------------------------------------


@dataclass
class Attempts:
    """What one method of a test server received."""

    count: int = 0
    previous: list[str | None] = field(default_factory=list)
    """``grpc-previous-rpc-attempts`` of each attempt (None on the first)."""
    time_remaining: list[float | None] = field(default_factory=list)

    def record(self, context: aio.ServicerContext[Any, Any]) -> None:
        self.count += 1
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get(PREVIOUS_ATTEMPTS)
        self.previous.append(value if isinstance(value, str) else None)
        self.time_remaining.append(context.time_remaining())


class FlakyEdge(edge_pb2_grpc.EdgeServiceServicer):
    """GetEdgeStatus fails UNAVAILABLE ``failures`` times, then answers; Authorize always fails
    UNAVAILABLE; GetWorkingMemory and FlushSync never answer."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls: dict[str, Attempts] = {}

    def _attempt(self, name: str, context: aio.ServicerContext[Any, Any]) -> Attempts:
        attempts = self.calls.setdefault(name, Attempts())
        attempts.record(context)
        return attempts

    async def GetEdgeStatus(
        self, request: edge_pb2.GetEdgeStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> edge_pb2.GetEdgeStatusResponse:
        attempts = self._attempt("GetEdgeStatus", context)
        if attempts.count <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {attempts.count}: try again")
        return edge_pb2.GetEdgeStatusResponse(agent_id="flaky-edge")

    async def Authorize(
        self, request: edge_pb2.AuthorizeRequest, context: aio.ServicerContext[Any, Any]
    ) -> edge_pb2.AuthorizeResponse:
        self._attempt("Authorize", context)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "cedar agent restarting")
        raise AssertionError("abort returned")

    async def GetWorkingMemory(
        self, request: edge_pb2.GetWorkingMemoryRequest, context: aio.ServicerContext[Any, Any]
    ) -> edge_pb2.GetWorkingMemoryResponse:
        self._attempt("GetWorkingMemory", context)
        await asyncio.Event().wait()  # hangs until the client's deadline cancels it
        raise AssertionError("unreachable")

    async def FlushSync(
        self, request: edge_pb2.FlushSyncRequest, context: aio.ServicerContext[Any, Any]
    ) -> edge_pb2.FlushSyncResponse:
        self._attempt("FlushSync", context)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "offline")
        raise AssertionError("abort returned")


class FlakyCentral(sync_pb2_grpc.SyncServiceServicer, policy_pb2_grpc.PolicyServiceServicer):
    """GetSyncCheckpoint and WatchPolicies fail UNAVAILABLE ``failures`` times, then answer."""

    def __init__(self) -> None:
        self.failures = 2
        self.calls: dict[str, Attempts] = {}

    def _attempt(self, name: str, context: aio.ServicerContext[Any, Any]) -> Attempts:
        attempts = self.calls.setdefault(name, Attempts())
        attempts.record(context)
        return attempts

    async def GetSyncCheckpoint(
        self, request: sync_pb2.GetSyncCheckpointRequest, context: aio.ServicerContext[Any, Any]
    ) -> sync_pb2.GetSyncCheckpointResponse:
        attempts = self._attempt("GetSyncCheckpoint", context)
        if attempts.count <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database failing over")
        return sync_pb2.GetSyncCheckpointResponse(
            checkpoints=[sync_pb2.ChannelCheckpoint(channel=sync_pb2.SYNC_CHANNEL_SESSIONS, sequence=41)]
        )

    async def WatchPolicies(
        self, request: policy_pb2.WatchPoliciesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.WatchPoliciesResponse]:
        attempts = self._attempt("WatchPolicies", context)
        if attempts.count <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "central restarting")
        yield policy_pb2.WatchPoliciesResponse(bundle=policy_pb2.PolicyBundle(version=7))


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(add[, credentials])``: an aio server on a free port (plaintext, or TLS with
    ``credentials``) with what ``add`` registers."""
    servers: list[aio.Server] = []

    async def start(add: Callable[[aio.Server], None], credentials: grpc.ServerCredentials | None = None) -> int:
        server = aio.server()
        add(server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(grace=None)


@pytest.fixture
async def flaky_edge(serve: Serve) -> tuple[FlakyEdge, str]:
    # The generated .pyi marks every RPC of the servicer base abstract; at run time the base answers
    # the RPCs left out UNIMPLEMENTED, which is all these partial servicers need.
    servicer = FlakyEdge()  # type: ignore[abstract]
    port = await serve(lambda server: edge_pb2_grpc.add_EdgeServiceServicer_to_server(servicer, server))
    return servicer, f"127.0.0.1:{port}"


async def test_an_idempotent_method_is_retried_until_it_succeeds(flaky_edge: tuple[FlakyEdge, str]) -> None:
    servicer, target = flaky_edge
    servicer.failures = 2
    async with open_channel(target, ClientSettings(agent_id="agent-7")) as channel:
        reply = await edge_pb2_grpc.EdgeServiceStub(channel).GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    assert reply.agent_id == "flaky-edge"
    attempts = servicer.calls["GetEdgeStatus"]
    assert attempts.count == 3
    assert attempts.previous == [None, "1", "2"]


async def test_a_non_idempotent_method_is_not_retried(flaky_edge: tuple[FlakyEdge, str]) -> None:
    servicer, target = flaky_edge
    async with open_channel(target, ClientSettings(agent_id="agent-7")) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.Authorize(edge_pb2.AuthorizeRequest(principal='User::"alice"'))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == "cedar agent restarting"
        with pytest.raises(aio.AioRpcError) as flushed:
            await stub.FlushSync(edge_pb2.FlushSyncRequest())
        assert flushed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["Authorize"].count == 1
    assert servicer.calls["FlushSync"].count == 1


async def test_retries_end_at_max_attempts_and_are_throttled_when_failures_go_on(
    flaky_edge: tuple[FlakyEdge, str],
) -> None:
    servicer, target = flaky_edge
    servicer.failures = 1_000
    per_call: list[int] = []
    async with open_channel(target, ClientSettings(agent_id="agent-7")) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        for _ in range(6):
            before = servicer.calls["GetEdgeStatus"].count if "GetEdgeStatus" in servicer.calls else 0
            with pytest.raises(aio.AioRpcError) as raised:
                await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            per_call.append(servicer.calls["GetEdgeStatus"].count - before)
    assert per_call[0] == service_config.RETRY_POLICY["maxAttempts"]
    # The first call spent the retry budget (retryThrottling: 4 of 10 tokens, retries only above 5):
    # the later failing calls are sent once each, not multiplied.
    assert per_call[1:] == [1] * 5, per_call


async def test_a_service_config_timeout_ends_a_hanging_call(flaky_edge: tuple[FlakyEdge, str]) -> None:
    servicer, target = flaky_edge
    # An hour of default deadline, and a caller's own 5 minutes: only the service config's 10 s for
    # GetWorkingMemory can end these calls (the outer guard only keeps a broken config from hanging the suite).
    async with open_channel(target, ClientSettings(unary_timeout=3600)) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        request = edge_pb2.GetWorkingMemoryRequest(key="k")
        async with asyncio.timeout(120):
            outcomes = await asyncio.gather(
                stub.GetWorkingMemory(request), stub.GetWorkingMemory(request, timeout=300), return_exceptions=True
            )
    for outcome in outcomes:
        assert isinstance(outcome, aio.AioRpcError), outcome
        assert outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.calls["GetWorkingMemory"].count == 2  # a deadline is not retried


async def test_deadlines_without_a_config_timeout_and_without_the_config(flaky_edge: tuple[FlakyEdge, str]) -> None:
    servicer, target = flaky_edge
    async with open_channel(target, ClientSettings(unary_timeout=45)) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        # FlushSync has no timeout in the config: the settings' default is its deadline.
        with pytest.raises(aio.AioRpcError):
            await stub.FlushSync(edge_pb2.FlushSyncRequest())
        # GetEdgeStatus has one (10 s): the interceptor leaves the deadline to gRPC and sends none of its own.
        servicer.failures = 0
        await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    (flush,) = servicer.calls["FlushSync"].time_remaining
    assert flush is not None
    assert 30 < flush <= 45.5
    (status,) = servicer.calls["GetEdgeStatus"].time_remaining
    assert status is None or status <= 10.5

    # service_config=False: no retries, and the settings' default deadline for every method.
    servicer.failures = 1_000
    servicer.calls.clear()
    async with open_channel(target, ClientSettings(unary_timeout=45, service_config=False)) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await edge_pb2_grpc.EdgeServiceStub(channel).GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetEdgeStatus"].count == 1
    (status,) = servicer.calls["GetEdgeStatus"].time_remaining
    assert status is not None
    assert 30 < status <= 45.5


class AnsweringCentral(sync_pb2_grpc.SyncServiceServicer, policy_pb2_grpc.PolicyServiceServicer):
    """Answers what ``aeterna status`` asks central (no EdgeService: UNIMPLEMENTED, as central does)."""

    def __init__(self) -> None:
        self.calls: dict[str, Attempts] = {}

    def _attempt(self, name: str, context: aio.ServicerContext[Any, Any]) -> None:
        self.calls.setdefault(name, Attempts()).record(context)

    async def ListEdges(
        self, request: sync_pb2.ListEdgesRequest, context: aio.ServicerContext[Any, Any]
    ) -> sync_pb2.ListEdgesResponse:
        self._attempt("ListEdges", context)
        return sync_pb2.ListEdgesResponse()

    async def ListConflicts(
        self, request: sync_pb2.ListConflictsRequest, context: aio.ServicerContext[Any, Any]
    ) -> sync_pb2.ListConflictsResponse:
        self._attempt("ListConflicts", context)
        return sync_pb2.ListConflictsResponse()

    async def GetPolicyBundle(
        self, request: policy_pb2.GetPolicyBundleRequest, context: aio.ServicerContext[Any, Any]
    ) -> policy_pb2.GetPolicyBundleResponse:
        self._attempt("GetPolicyBundle", context)
        return policy_pb2.GetPolicyBundleResponse(bundle=policy_pb2.PolicyBundle(version=3))


async def test_the_status_commands_timeout_is_the_deadline_of_centrals_calls_too(serve: Serve) -> None:
    """``aeterna status --timeout 2.5`` against central: the fallback calls carry that deadline, not their own."""
    servicer = AnsweringCentral()  # type: ignore[abstract]  # partial servicer, see flaky_edge

    def add(server: aio.Server) -> None:
        sync_pb2_grpc.add_SyncServiceServicer_to_server(servicer, server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)

    port = await serve(add)
    status = await asyncio.to_thread(status_of, f"127.0.0.1:{port}", ClientSettings(unary_timeout=2.5))
    assert (status["role"], status["policyVersion"], status["edges"]) == ("central", 3, [])
    deadlines = {name: attempts.time_remaining for name, attempts in servicer.calls.items()}
    assert set(deadlines) == {"ListEdges", "ListConflicts", "GetPolicyBundle"}
    for name, (remaining,) in deadlines.items():
        assert remaining is not None, name
        assert remaining <= 2.6, name  # gRPC rounds the deadline it sends up a little


async def test_a_pinned_channel_takes_the_timeouts_but_does_not_retry(serve: Serve, tls_material: TlsMaterial) -> None:
    servicer = FlakyEdge()  # type: ignore[abstract]
    credentials = grpc.ssl_server_credentials(
        [(tls_material.server.key.read_bytes(), tls_material.server.cert.read_bytes())]
    )

    def add(server: aio.Server) -> None:
        edge_pb2_grpc.add_EdgeServiceServicer_to_server(servicer, server)

    port = await serve(add, credentials)
    target = f"localhost:{port}"
    tls = ClientSettings(tls=True, ca_file=str(tls_material.ca.cert))
    pinned = ClientSettings(tls=True, ca_file=str(tls_material.ca.cert), pins=(tls_material.server.pin,))

    servicer.failures = 2
    async with open_channel(target, pinned) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetEdgeStatus"].count == 1

    servicer.calls.clear()
    async with open_channel(target, tls) as channel:
        await edge_pb2_grpc.EdgeServiceStub(channel).GetEdgeStatus(edge_pb2.GetEdgeStatusRequest())
    assert servicer.calls["GetEdgeStatus"].count == 3
    # What the pinned channel loads: the same timeouts, no retry policy.
    timeouts_only = service_config.service_config_json(retries=False)
    assert service_config.method_timeouts(timeouts_only) == service_config.method_timeouts()
    assert "retryPolicy" not in timeouts_only


# --- the edge's channel to central ------------------------------------------------------------


@pytest.fixture
async def flaky_central(serve: Serve) -> tuple[FlakyCentral, int]:
    servicer = FlakyCentral()  # type: ignore[abstract]

    def add(server: aio.Server) -> None:
        sync_pb2_grpc.add_SyncServiceServicer_to_server(servicer, server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)

    return servicer, await serve(add)


async def test_the_edges_channel_to_central_retries_with_the_service_config(
    flaky_central: tuple[FlakyCentral, int],
) -> None:
    servicer, port = flaky_central
    config = make_config(
        {
            "sync": {"centralServer": {"url": f"http://127.0.0.1:{port}"}, "signing": {"key": "test-key"}},
            "edge": {"agentId": "edge-a", "tenantId": "tenant-a"},
        }
    )
    link = central_link(config)
    assert link.settings.service_config
    central = GrpcCentral(link, incarnation_id="inc-1")
    try:
        # A unary call: what the edge asks on every reconnect.
        assert (await central.checkpoints({})).sequences == {Channel.SESSIONS: 41}
        # A server stream, retried before its first message: the policy watch.
        bundles = central.watch_policies(known_version=0)
        first = await anext(bundles)
        assert isinstance(bundles, AsyncGenerator)
        await bundles.aclose()
    finally:
        await central.close()
    assert first.version == 7
    for name in ("GetSyncCheckpoint", "WatchPolicies"):
        assert servicer.calls[name].count == 3, name
        assert servicer.calls[name].previous == [None, "1", "2"], name
    # The edge's own deadline (sync.centralServer.timeout, 30 s by default) is the checkpoint call's.
    assert all(r is not None and 20 < r <= 30.5 for r in servicer.calls["GetSyncCheckpoint"].time_remaining)
