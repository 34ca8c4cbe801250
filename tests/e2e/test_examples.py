"""The example configurations and policies in examples/ work as the README says:
they load, a central and an edge run from them, and the example policies decide."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import yaml
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.policy.v1 import decision_pb2

from aeterna_shared.config import load_config
from tests.support.services import ServiceFactory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _document(name: str, tmp_path: Path, **ports: Any) -> dict[str, Any]:
    """An example config with its fixed ports and data folders moved into the test's own space."""
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    section = document["central"] if "central" in document else document["edge"]
    section["dataDir"] = str(tmp_path / name / "data")
    document["telemetry"]["metricsPort"] = 0
    for dotted, value in ports.items():
        target = document
        *path, key = dotted.split(".")
        for part in path:
            target = target[part]
        target[key] = value
    return document


def test_example_configs_load() -> None:
    central = load_config(EXAMPLES / "central.yaml", {})
    edge = load_config(EXAMPLES / "edge.yaml", {})
    assert central.sync.listen_port == edge.sync.central_server.port == 8081
    assert central.aeterna.offline.conflict_resolution_by_action == {'Action::"approve"': "manual"}


async def test_example_central_edge_and_policies(services: ServiceFactory, tmp_path: Path) -> None:
    central = services.make("central", "central", _document("central.yaml", tmp_path, **{"sync.listenPort": 0}))
    central.start()
    edge = services.make(
        "edge",
        "edge",
        _document(
            "edge.yaml",
            tmp_path,
            **{
                "edge.listenPort": 0,
                "sync.centralServer.port": central.port,
                "centralServer.healthCheck.interval": "300ms",
            },
        ),
    ).start()
    publish = [
        sys.executable, "-m", "aeterna_cli.main", "policy", "publish", str(EXAMPLES / "policies"),
        "--target", central.target,
    ]  # fmt: skip
    published = await asyncio.to_thread(
        subprocess.run, publish, capture_output=True, text=True, timeout=60, check=False
    )
    assert published.returncode == 0, published.stderr

    async with grpc.aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)

        async def decide(principal: str, amount: int) -> edge_pb2.AuthorizeResponse:
            request = edge_pb2.AuthorizeRequest(
                principal=f'User::"{principal}"', action='Action::"approve"', resource='Invoice::"inv-1"'
            )
            request.context.update({"amount": amount})
            return await stub.Authorize(request)

        for _ in range(100):
            reply = await decide("alice", 500)
            if reply.policy_version:
                break
            await asyncio.sleep(0.1)
        assert reply.effect == decision_pb2.EFFECT_ALLOW
        assert list(reply.determining_policies) == ["approve"]
        assert (await decide("alice", 20_000)).effect == decision_pb2.EFFECT_DENY
        assert (await decide("mallory", 500)).effect == decision_pb2.EFFECT_DENY
