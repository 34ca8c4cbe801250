"""A real TLS gRPC server with the real interceptor chain, plus real credentials to call it.

The servicer is a small ``SyncService`` built on the generated base (central's
own servicer is developed separately): it admits batches with central's own
admission step (``central_svc.admission.admit``), and records what it stored, so
tests can assert that refused calls stored nothing. A generic ``Shapes``
service (raw bytes) covers all four RPC shapes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from aeterna_security.identity import current_identity
from aeterna_security.tls import server_credentials
from aeterna_server.server import ServiceBinding, bind, build_server
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import ERROR_DOMAIN
from aeterna_shared.wire.canonical import sign_batch
from central_svc.admission import AdmissionRules, admit
from central_svc.batches import Channel
from interceptors.chain import server_interceptors
from interceptors.ratelimit import Limiter
from interceptors.telemetry import GRPC_CODE_LABELS, Telemetry
from tests.support.tls import TlsMaterial

SIGNING_KEY = b"test-signing-key-edge-a"
SYNC_SERVICE = sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name
SHAPES = "aeterna.test.Shapes"


def make_config(document: dict[str, Any]) -> AeternaConfig:
    """A validated config from a YAML-shaped document."""
    return AeternaConfig.model_validate(document)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``extra``."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class TestSync(sync_pb2_grpc.SyncServiceServicer):
    """Stores signed session batches of the caller only; lists episodes of the caller only."""

    __test__ = False

    def __init__(self, window: timedelta) -> None:
        self.admission = AdmissionRules(
            key_for=lambda _agent_id: SIGNING_KEY,
            max_items=dict.fromkeys(Channel, 1000),
            freshness=window,
            clock=lambda: datetime.now(UTC),
        )
        self.stored: dict[str, list[str]] = {}
        self.calls = 0
        self.deadlines: list[float | None] = []

    async def SearchVectors(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        self.deadlines.append(context.time_remaining())
        identity = current_identity()
        return sync_pb2.SearchVectorsResponse(results=[memory_pb2.ScoredVector(score=1.0)] if identity.agent_id else [])

    async def ListEpisodes(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        current_identity().require_agent(request.agent_id)
        return sync_pb2.ListEpisodesResponse()

    async def SyncSessions(
        self, request_iterator: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self.calls += 1
        identity = current_identity()
        async for request in request_iterator:
            admit(request, identity, Channel.SESSIONS, len(request.sessions), self.admission)
            self.stored.setdefault(identity.agent_id, []).extend(s.session_id for s in request.sessions)
            yield sync_pb2.SyncSessionsResponse(
                ack=sync_pb2.BatchAck(
                    batch_id=request.header.batch_id,
                    sequence=request.header.sequence,
                    processed=len(request.sessions),
                )
            )


def _shapes_handler(received: list[int]) -> grpc.GenericRpcHandler:
    async def unary_unary(request: bytes, context: Any) -> bytes:
        received.append(len(request))
        return current_identity().agent_id.encode()

    async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield current_identity().agent_id.encode()

    async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
        count = 0
        async for _ in requests:
            count += 1
        return f"{current_identity().agent_id}:{count}".encode()

    async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for item in requests:
            yield item

    return grpc.method_handlers_generic_handler(
        SHAPES,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


@dataclass
class ShapeCalls:
    """The ``Shapes`` service's four methods on a channel: raw bytes in and out, no (de)serializer."""

    unary_unary: aio.UnaryUnaryMultiCallable[bytes, bytes]
    unary_stream: aio.UnaryStreamMultiCallable[bytes, bytes]
    stream_unary: aio.StreamUnaryMultiCallable[bytes, bytes]
    stream_stream: aio.StreamStreamMultiCallable[bytes, bytes]


class Outgoing:
    """A stream's requests, sent one at a time (``send``) until ``close``.

    For lock-step streams instead of ``call.write``: through client interceptors grpc proxies
    writes over a queue, and when the server ends the call first (a refusal) grpc's writer task
    waits on that queue for ever, to be destroyed pending at some later garbage collection, which
    pytest then reports in whichever test is running. Closing ``Outgoing`` ends that task.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, message: bytes) -> None:
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[bytes]:
        while (message := await self._queue.get()) is not None:
            yield message


def shape_calls(channel: aio.Channel) -> ShapeCalls:
    """``ShapeCalls`` on ``channel``."""
    return ShapeCalls(
        channel.unary_unary(f"/{SHAPES}/UnaryUnary"),
        channel.unary_stream(f"/{SHAPES}/UnaryStream"),
        channel.stream_unary(f"/{SHAPES}/StreamUnary"),
        channel.stream_stream(f"/{SHAPES}/StreamStream"),
    )


@dataclass
class RunningServer:
    """A started server and what it recorded."""

    server: aio.Server
    port: int
    servicer: TestSync
    registry: CollectorRegistry
    config: AeternaConfig
    shapes_received: list[int] = field(default_factory=list)

    def handled(self, method_suffix: str, code: str) -> float:
        """How many calls ended with ``code`` (a ``grpc.StatusCode`` name; from the server's
        ``grpc_server_handled_total``, which spells codes as Go does)."""
        label = GRPC_CODE_LABELS[grpc.StatusCode[code]]
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if (
                    sample.name == "grpc_server_handled_total"
                    and sample.labels["grpc_method"].endswith(method_suffix)
                    and sample.labels["grpc_code"] == label
                ):
                    total += sample.value
        return total


ServeFactory = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    """Start servers with the real chain (``server_interceptors``) and TLS from the config; stopped after the test."""
    started: list[RunningServer] = []

    async def start(
        config: AeternaConfig,
        *,
        telemetry: Telemetry | None = None,
        limiter: Limiter | None = None,
        window: timedelta = timedelta(minutes=5),
    ) -> RunningServer:
        registry = telemetry.registry if telemetry and telemetry.registry else CollectorRegistry()
        telemetry = Telemetry(registry=registry, tracer_provider=telemetry.tracer_provider if telemetry else None)
        # The generated .pyi marks every RPC of the servicer base abstract; at run time the base answers
        # the RPCs TestSync leaves out UNIMPLEMENTED, which is what this partial servicer relies on.
        servicer = TestSync(window)  # type: ignore[abstract]
        received: list[int] = []
        shapes = _shapes_handler(received)
        server, _health = build_server(
            [
                ServiceBinding(sync_pb2_grpc.add_SyncServiceServicer_to_server, servicer, SYNC_SERVICE),
                ServiceBinding(lambda _s, srv: srv.add_generic_rpc_handlers((shapes,)), None, SHAPES),
            ],
            interceptors=server_interceptors(config, role="central", telemetry=telemetry, limiter=limiter),
            compression=config.sync.network.compression,
            max_message_bytes=config.sync.batch.max_bytes,
        )
        port = bind(server, "127.0.0.1", 0, server_credentials(config.tls))
        await server.start()
        running = RunningServer(server, port, servicer, registry, config, received)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.stop(grace=None)


def server_config(tls: TlsMaterial, extra: dict[str, Any] | None = None, *, cert: str = "server") -> AeternaConfig:
    """Central's config: TLS with ``cert``, telemetry on, plus ``extra``."""
    files = getattr(tls, cert)
    document: dict[str, Any] = {
        "tls": {"enabled": True, "certFile": str(files.cert), "keyFile": str(files.key), "caFile": str(tls.ca.cert)},
        "sync": {"rateLimit": "1000/sec", "rateLimitBurst": 1000},
    }
    return make_config(deep_merge(document, extra or {}))


def edge_config(tls: TlsMaterial, port: int, extra: dict[str, Any] | None = None) -> AeternaConfig:
    """The edge's config pointing at ``https://localhost:<port>`` and trusting the test CA."""
    document: dict[str, Any] = {
        "sync": {"centralServer": {"url": f"https://localhost:{port}", "timeout": "10s"}},
        "tls": {"caFile": str(tls.ca.cert)},
        "edge": {"agentId": "edge-a", "tenantId": "tenant-a"},
    }
    return make_config(deep_merge(document, extra or {}))


def error_reason(error: grpc.RpcError) -> str:
    """``ErrorInfo.reason`` of a failed call (asserting the domain)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == ERROR_DOMAIN
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the status details")


def status_detail(error: grpc.RpcError, kind: Any) -> Any:
    """The first detail of type ``kind``, or None."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None


def signed_batch(
    agent_id: str = "edge-a",
    *,
    sessions: int = 1,
    sent: datetime | None = None,
    key: bytes = SIGNING_KEY,
    sequence: int = 1,
) -> sync_pb2.SyncSessionsRequest:
    """A signed session batch as the edge builds it."""
    request = sync_pb2.SyncSessionsRequest(
        header=sync_pb2.BatchHeader(batch_id=str(uuid.uuid4()), sequence=sequence, agent_id=agent_id, region="eu"),
        sessions=[memory_pb2.Session(session_id=f"s-{uuid.uuid4().hex[:8]}", user_id="u") for _ in range(sessions)],
    )
    request.header.sent_time.FromDatetime(sent or datetime.now(UTC))
    sign_batch(request, key)
    return request


# --- JWT issuers --------------------------------------------------------------------


@dataclass
class JwtIssuer:
    """Real signing keys and the JWKS file central trusts."""

    jwks_file: Path
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    stranger_key: rsa.RSAPrivateKey
    issuer: str = "https://auth.test.example"
    audience: str = "aeterna-central"

    def token(
        self,
        sub: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        lifetime: float = 300,
        not_before: float | None = None,
        algorithm: str = "RS256",
        key: Any = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT; every argument can be made wrong on purpose."""
        now = time.time()
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "iat": int(now),
            "exp": int(now + lifetime),
            **claims,
        }
        if not_before is not None:
            payload["nbf"] = int(not_before)
        signing_key = key or (self.rsa_key if algorithm == "RS256" else self.ec_key)
        headers = {"kid": kid or ("rsa-1" if algorithm == "RS256" else "ec-1")}
        return jwt.encode(payload, signing_key, algorithm=algorithm, headers=headers)


@pytest.fixture(scope="session")
def jwt_issuer(tmp_path_factory: pytest.TempPathFactory) -> JwtIssuer:
    """An RSA and an EC signing key published in a JWKS file, and a key nobody trusts."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return JwtIssuer(path, rsa_key, ec_key, stranger)


# --- a real Redis for the shared limiter ------------------------------------------------


@pytest.fixture(scope="session")
def limiter_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a Unix socket (no TCP port at all), stopped after the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    directory = tmp_path_factory.mktemp("redis-limiter")
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)
    try:
        yield f"unix://{socket_path}"
    finally:
        process.terminate()
        process.wait(10)


async def gather_limited(coroutines: list[Any], limit: int) -> list[Any]:
    """Run coroutines with at most ``limit`` in flight, returning results or exceptions."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            try:
                return await coroutine
            except grpc.RpcError as error:
                return error

    return await asyncio.gather(*(one(c) for c in coroutines))
