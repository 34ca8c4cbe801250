"""An in-process central on a real PostgreSQL, reached over a real gRPC channel (port 0)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc import aio

from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_shared.config import AeternaConfig
from aeterna_shared.wire.canonical import session_checksum, sign_batch
from central_svc.deps import CentralDeps, build_deps
from central_svc.server import CentralServer, create_server
from central_svc.store.database import Database
from tests.support.postgres import TEST_VECTOR_DIMENSION


def make_config(database_url: str, **overrides: Any) -> AeternaConfig:
    """A central config on the test database."""
    document: dict[str, Any] = {
        "postgresql": {"url": database_url},
        "vectorDatabase": {"dimension": TEST_VECTOR_DIMENSION},
        "sync": {"listenPort": 0, "network": {"compression": "gzip"}},
        "telemetry": {"metricsPort": 0},
    }
    for dotted, value in overrides.items():
        node = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return AeternaConfig.model_validate(document)


def now_stamp(moment: datetime | None = None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment or datetime.now(UTC))
    return stamp


def make_session(session_id: str, *, activity: datetime | None = None, text: str = "hello") -> memory_pb2.Session:
    """A session with a correct checksum."""
    session = memory_pb2.Session(
        session_id=session_id,
        user_id="user-1",
        messages=[memory_pb2.SessionMessage(role="user", content=text)],
        last_activity_time=now_stamp(activity),
    )
    session.state.update({"step": 1})
    session.checksum = session_checksum(session)
    return session


@dataclass
class Edge:
    """A test edge: signs batches and numbers them."""

    agent_id: str
    tenant_id: str = "default"
    region: str = "us-west-2"
    key: bytes = DEVELOPMENT_KEY
    sequences: dict[str, int] = field(default_factory=dict)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-aeterna-agent-id", self.agent_id), ("x-aeterna-tenant-id", self.tenant_id))

    def header(self, channel: str, *, sequence: int | None = None) -> sync_pb2.BatchHeader:
        if sequence is None:
            sequence = self.sequences.get(channel, 0) + 1
            self.sequences[channel] = sequence
        return sync_pb2.BatchHeader(
            batch_id=str(uuid.uuid4()),
            sequence=sequence,
            agent_id=self.agent_id,
            region=self.region,
            sent_time=now_stamp(),
        )

    def sessions(self, sessions: list[memory_pb2.Session], **kw: Any) -> sync_pb2.SyncSessionsRequest:
        request = sync_pb2.SyncSessionsRequest(header=self.header("sessions", **kw), sessions=sessions)
        sign_batch(request, self.key)
        return request


@dataclass
class Central:
    """A running in-process central and a channel to it."""

    config: AeternaConfig
    deps: CentralDeps
    server: CentralServer
    channel: aio.Channel
    port: int

    @property
    def sync(self) -> sync_pb2_grpc.SyncServiceAsyncStub:
        return sync_pb2_grpc.SyncServiceStub(self.channel)

    @property
    def policy(self) -> policy_pb2_grpc.PolicyServiceAsyncStub:
        return policy_pb2_grpc.PolicyServiceStub(self.channel)

    async def send_sessions(self, edge: Edge, *requests: sync_pb2.SyncSessionsRequest) -> list[sync_pb2.BatchAck]:
        call = self.sync.SyncSessions(iter(requests), metadata=edge.metadata)
        return [response.ack async for response in call]


StartCentral = Callable[..., Awaitable[Central]]
"""``start_central(url=None, **config_overrides)``: a started central, stopped at the end of the test."""


@pytest.fixture
async def start_central(database_url: str) -> AsyncIterator[StartCentral]:
    """Factory: ``await start_central(**config_overrides)``; everything is stopped at the end of the test."""
    started: list[tuple[Central, Database]] = []

    async def start(url: str | None = None, **overrides: Any) -> Central:
        config = make_config(url or database_url, **overrides)
        assert config.postgresql.url is not None
        database = Database(config.postgresql.url, max_size=4)
        await database.open()
        deps = await build_deps(config, database)
        deps.listener.start()
        await deps.listener.connected.wait()
        server = create_server(config, deps)
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        central = Central(config, deps, server, channel, server.port)
        started.append((central, database))
        return central

    yield start
    for central, database in reversed(started):
        await central.channel.close()
        await central.server.stop(None)
        await central.deps.listener.stop()
        await database.close()


@pytest.fixture
async def central(start_central: StartCentral) -> Central:
    """One central with default settings."""
    return await start_central()
