"""What an operator's Prometheus sees: both processes serve /metrics with the
sync metrics and the standard gRPC series (grpc-ecosystem names) that the
dashboard and docs/observability.md name."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2

from tests.support.services import ServiceProcess


def scrape(service: ServiceProcess) -> dict[str, float]:
    """Samples of the service's /metrics as {'name{labels}': value}."""
    assert service.metrics_port, "the ready file names no metrics port"
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` carrying ``labels`` (0 when absent)."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    matches = [v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in wanted)]
    assert len(matches) <= 1, f"{name} {labels} matches several samples"
    return matches[0] if matches else 0.0


async def test_sync_and_rpc_metrics_are_exported(
    start_central: Callable[..., ServiceProcess], start_edge: Callable[..., ServiceProcess]
) -> None:
    central = start_central()
    edge = start_edge(central)
    async with grpc.aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        for index in range(3):
            session = memory_pb2.Session(session_id=f"m{index}", user_id="u")
            await stub.PutSession(edge_pb2.PutSessionRequest(session=session))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PutSession(edge_pb2.PutSessionRequest(session=memory_pb2.Session(session_id="")))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        before = scrape(edge)
        assert sample(before, "aeterna_edge_online") == 1
        await stub.FlushSync(edge_pb2.FlushSyncRequest())

    edge_samples = scrape(edge)
    assert sample(edge_samples, "aeterna_sync_batches_total", channel="sessions", status="accepted") >= 1
    assert sample(edge_samples, "aeterna_sync_items_total", channel="sessions", status="applied") == 3
    assert sample(edge_samples, "aeterna_outbox_depth", channel="sessions") == 0
    assert sample(edge_samples, "aeterna_last_sync_timestamp_seconds", channel="sessions") > 0
    # The grpc-ecosystem series a stock gRPC dashboard reads, codes spelled as Go spells them.
    put = {"grpc_service": "aeterna.edge.v1.EdgeService", "grpc_method": "PutSession", "grpc_type": "unary"}
    assert sample(edge_samples, "grpc_server_started_total", **put) == 4
    assert sample(edge_samples, "grpc_server_handled_total", **put, grpc_code="OK") == 3
    assert sample(edge_samples, "grpc_server_handled_total", **put, grpc_code="InvalidArgument") == 1
    assert sample(edge_samples, "grpc_server_msg_received_total", **put) == 4
    assert sample(edge_samples, "grpc_server_msg_sent_total", **put) == 3
    assert sample(edge_samples, "grpc_server_handling_seconds_count", **put) == 4
    assert sample(edge_samples, "grpc_server_handling_seconds_bucket", **put, le="+Inf") == 4
    assert not any(name.startswith("aeterna_rpc_requests") for name in edge_samples)

    # The edge's SyncSessions stream ends OK at central (read to its end, not cancelled under it).
    central_samples = scrape(central)
    sync = {"grpc_service": "aeterna.sync.v1.SyncService", "grpc_method": "SyncSessions", "grpc_type": "bidi_stream"}
    assert sample(central_samples, "grpc_server_handled_total", **sync, grpc_code="OK") >= 1
    assert sample(central_samples, "grpc_server_handled_total", **sync, grpc_code="Canceled") == 0
    assert sample(central_samples, "grpc_server_msg_received_total", **sync) >= 1
    assert sample(central_samples, "grpc_server_msg_sent_total", **sync) == sample(
        central_samples, "grpc_server_msg_received_total", **sync
    )
