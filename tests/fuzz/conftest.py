"""In-process central (real PostgreSQL) and edge (real Redis, SQLite, Qdrant Edge, cedarpy) for fuzzing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from aeterna_shared.config import AeternaConfig
from central_svc.deps import build_deps
from central_svc.server import create_server as create_central
from central_svc.store.database import Database
from edge_svc.deps import open_edge
from edge_svc.server import create_server as create_edge
from tests.fault.support import DIMENSION, SUMMARIES, free_port


@dataclass
class Target:
    """A running in-process server and a channel to it."""

    channel: aio.Channel
    database_url: str | None = None


@pytest.fixture
async def central_target(database_url: str) -> AsyncIterator[Target]:
    config = _central_config(database_url)
    database = Database(database_url, max_size=4)
    await database.open()
    deps = await build_deps(config, database)
    deps.listener.start()
    await deps.listener.connected.wait()
    server = create_central(config, deps)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Target(channel, database_url)
    finally:
        await channel.close()
        await server.stop(None)
        await deps.listener.stop()
        await database.close()


def _central_config(database_url: str) -> AeternaConfig:
    document: dict[str, Any] = {
        "postgresql": {"url": database_url},
        "vectorDatabase": {"dimension": DIMENSION},
        # The rate limit is tested elsewhere; here every input must reach validation.
        "sync": {"listenPort": 0, "batch": {"maxBytes": 1048576}, "rateLimit": "100000/sec"},
        "telemetry": {"metricsPort": 0},
    }
    return AeternaConfig.model_validate(document)


@pytest.fixture
async def edge_target(tmp_path: Path, redis_url: str) -> AsyncIterator[Target]:
    document: dict[str, Any] = {
        "deploymentMode": "edge",
        "edge": {"agentId": "edge-fuzz", "region": "eu-fuzz", "dataDir": str(tmp_path / "edge"), "listenPort": 0},
        "cache": {"url": redis_url},
        "sync": {
            "centralServer": {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s", "maxRetries": 0},
            "rateLimit": "100000/sec",
        },
        "centralServer": {"healthCheck": {"interval": "5s", "timeout": "200ms", "failureThreshold": 1}},
        "vectorDatabase": {"dimension": DIMENSION},
        "telemetry": {"metricsPort": 0},
    }
    config = AeternaConfig.model_validate(document)
    resources = await open_edge(config)
    await resources.node.start()
    server, port = create_edge(config, resources.node)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Target(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await resources.node.shutdown(0.1)
        await resources.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [line for line in SUMMARIES if line.startswith("FUZZ")]
    if lines:
        terminalreporter.section("fuzz summaries")
        for line in lines:
            terminalreporter.write_line(line)
