"""Fixtures for edge tests: an in-process edge node on real stores, and config documents for real processes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aeterna.edge.v1 import edge_pb2_grpc
from grpc import aio

from aeterna_shared.config import AeternaConfig
from edge_svc.deps import EdgeDeps, open_edge
from edge_svc.server import EdgeServer, create_server

DIMENSION = 8

BUNDLE_POLICY = """
permit(principal == User::"alice", action == Action::"approve", resource);
forbid(principal, action, resource) when { context has risk && context.risk > 5 };
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def edge_document(data_dir: Path, central_port: int, **overrides: Any) -> dict[str, Any]:
    """A config document for an edge with fast intervals, suitable for tests."""
    document: dict[str, Any] = {
        "deploymentMode": "edge",
        "edge": {"agentId": "edge-test-1", "region": "eu-test", "dataDir": str(data_dir), "listenPort": 0},
        "sync": {
            "centralServer": {"url": f"http://127.0.0.1:{central_port}", "timeout": "3s", "maxRetries": 2},
            "sessionMemory": {"interval": "60s"},
            "signing": {"key": "edge-test-signing-key"},
        },
        "centralServer": {"healthCheck": {"interval": "200ms", "timeout": "500ms", "failureThreshold": 2}},
        "vectorDatabase": {"dimension": DIMENSION},
        "telemetry": {"metricsPort": 0},
    }
    for dotted, value in overrides.items():
        target = document
        keys = dotted.split(".")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return document


@pytest.fixture
async def offline_edge(tmp_path: Path, redis_url: str) -> AsyncIterator[EdgeDeps]:
    """An edge node built in-process on real Redis, SQLite, Qdrant Edge and cedarpy, with no central."""
    document = edge_document(tmp_path / "edge", closed_port())
    document["cache"] = {"url": redis_url}
    config = AeternaConfig.model_validate(document)
    resources = await open_edge(config)
    await resources.node.start()
    try:
        yield resources
    finally:
        await resources.node.shutdown(0.1)
        await resources.close()


@pytest.fixture
async def edge_stub(offline_edge: EdgeDeps) -> AsyncIterator[edge_pb2_grpc.EdgeServiceAsyncStub]:
    """A client of the in-process edge's gRPC server (bound to port 0)."""
    server: EdgeServer
    server, port = create_server(offline_edge.config, offline_edge.node)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield edge_pb2_grpc.EdgeServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
