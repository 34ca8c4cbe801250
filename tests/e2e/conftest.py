"""A central and edges as real processes, configured the way an operator would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import ServiceFactory, ServiceProcess


def central_document(database_url: str, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Config of a central using the test's PostgreSQL."""
    document: dict[str, Any] = {
        "deploymentMode": "central",
        "postgresql": {"url": database_url},
        "sync": {"listenPort": 0},
        "central": {"dataDir": str(data_dir)},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
    }
    document.update(overrides)
    return document


def edge_document(central_port: int, data_dir: Path, agent_id: str, region: str, **overrides: Any) -> dict[str, Any]:
    """Config of an edge that syncs to the central on ``central_port``, with short intervals."""
    document: dict[str, Any] = {
        "deploymentMode": "edge",
        "sync": {
            "centralServer": {"url": "http://127.0.0.1", "port": central_port, "timeout": "5s"},
            "memoryLayers": {"session": {"interval": "1h"}},
        },
        "centralServer": {"healthCheck": {"interval": "300ms", "timeout": "1s", "failureThreshold": 3}},
        "edge": {"agentId": agent_id, "region": region, "dataDir": str(data_dir), "listenPort": 0},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
    }
    document.update(overrides)
    return document


@pytest.fixture
def start_central(services: ServiceFactory, database_url: str, tmp_path: Path) -> Callable[..., ServiceProcess]:
    def start(name: str = "central", **overrides: Any) -> ServiceProcess:
        document = central_document(database_url, tmp_path / name / "data", **overrides)
        return services.make("central", name, document).start()

    return start


@pytest.fixture
def start_edge(services: ServiceFactory, tmp_path: Path) -> Callable[..., ServiceProcess]:
    def start(
        central: ServiceProcess, name: str = "edge-1", region: str = "us-west-2", **overrides: Any
    ) -> ServiceProcess:
        document = edge_document(central.port, tmp_path / name / "data", name, region, **overrides)
        return services.make("edge", name, document).start()

    return start
