"""``aeterna status`` answers for an edge and for central with the same command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import grpc
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2

from tests.support.services import ServiceProcess


def status(target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeterna_cli.main", "status", "--target", target, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_status_of_an_edge_and_of_central(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess]
) -> None:
    central = start_central()
    edge = start_edge(central)
    async with grpc.aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        await stub.PutSession(edge_pb2.PutSessionRequest(session=memory_pb2.Session(session_id="st-1", user_id="u")))
        await stub.FlushSync(edge_pb2.FlushSyncRequest())

    edge_table = status(edge.target)
    assert edge_table.returncode == 0, edge_table.stderr
    assert "edge-1" in edge_table.stdout
    assert "ONLINE" in edge_table.stdout
    assert "sessions" in edge_table.stdout
    edge_json = json.loads(status(edge.target, "--json").stdout)
    assert edge_json["role"] == "edge"
    assert edge_json["linkState"] == "ONLINE"

    central_json = json.loads(status(central.target, "--json").stdout)
    assert central_json["role"] == "central"
    shown = [{k: e[k] for k in ("agentId", "region", "state")} for e in central_json["edges"]]
    assert {"agentId": "edge-1", "region": "us-west-2", "state": "online"} in shown
    assert all(e["incarnationId"] and e["incarnationCount"] == 1 for e in central_json["edges"])
    central_table = status(central.target)
    assert "1 online of 1 registered" in central_table.stdout


def test_status_of_nothing_says_so() -> None:
    result = status("127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1
    assert "cannot get the status of 127.0.0.1:1" in result.stderr
