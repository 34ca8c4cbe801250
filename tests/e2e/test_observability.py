"""What an operator's Prometheus sees: both processes serve /metrics with the
sync and RPC metrics the dashboard and docs/observability.md name."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
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
        before = scrape(edge)
        assert sample(before, "aeterna_edge_online") == 1
        await stub.FlushSync(edge_pb2.FlushSyncRequest())

    edge_samples = scrape(edge)
    assert sample(edge_samples, "aeterna_sync_batches_total", channel="sessions", status="accepted") >= 1
    assert sample(edge_samples, "aeterna_sync_items_total", channel="sessions", status="applied") == 3
    assert sample(edge_samples, "aeterna_outbox_depth", channel="sessions") == 0
    assert sample(edge_samples, "aeterna_last_sync_timestamp_seconds", channel="sessions") > 0
    assert (
        sample(
            edge_samples,
            "aeterna_rpc_requests_total",
            method="/aeterna.edge.v1.EdgeService/PutSession",
            code="OK",
        )
        == 3
    )

    central_samples = scrape(central)
    handled = sample(central_samples, "aeterna_rpc_requests_total", method="/aeterna.sync.v1.SyncService/SyncSessions")
    assert handled >= 1
