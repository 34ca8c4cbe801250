"""Edge benchmarks, each next to a bare gRPC echo served by the same server stack in the same run.

    python -m bench.edge_bench            # full run: 100k x 384 vectors
    python -m bench.edge_bench --quick    # seconds, for CI smoke

Prints:

* ``Authorize`` throughput with 32 calls in flight and its p50 latency, next
  to an echo method registered on the very same server (same interceptor
  chain, compression and options), and the ratios (goals: >= 70 % of echo
  throughput, p50 <= echo p50 + 0.2 ms);
* local ``SearchVectors`` p50 (top 10) over clustered vectors in the edge's
  Qdrant Edge shard after ``optimize()``, next to the echo p50 (goal <= echo
  p50 + 1 ms).

The edge runs in-process on real stores (an owned redis-server, SQLite
outbox, Qdrant Edge, cedarpy) with no central reachable, so every decision is
also queued in the outbox as it would be offline. Client and server share the
process, so figures are lower bounds. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from grpc import aio

from aeterna_shared.config import AeternaConfig
from edge_svc.__main__ import open_edge
from edge_svc.records import PolicyBundleRecord, VectorRecord
from edge_svc.server import create_server

ECHO_METHOD = "/aeterna.bench.v1.Echo/Echo"
POLICY = 'permit(principal == User::"alice", action == Action::"approve", resource) when { context.risk < 5 };'


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)
    return grpc.method_handlers_generic_handler("aeterna.bench.v1.Echo", {"Echo": handler})


async def _run_concurrent(call: Callable[[], Awaitable[Any]], total: int, in_flight: int) -> tuple[float, list[float]]:
    """(calls per second, latencies in ms) for ``total`` calls with ``in_flight`` outstanding."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - started), latencies


def _clustered(count: int, dimension: int, seed: int = 7) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dimension)).astype(np.float32)
    labels = rng.integers(0, 64, size=count)
    return (centers[labels] + 0.15 * rng.normal(size=(count, dimension))).astype(np.float32)


async def run(quick: bool) -> None:
    calls = 2_000 if quick else 20_000
    vector_count = 5_000 if quick else 100_000
    dimension = 384
    with tempfile.TemporaryDirectory(prefix="aeterna-edge-bench-") as tmp:
        config = AeternaConfig.model_validate(
            {
                "edge": {"dataDir": str(Path(tmp) / "edge"), "listenPort": 0},
                "sync": {"centralServer": {"url": "http://127.0.0.1:9"}, "rateLimit": "10000000/sec"},
                "telemetry": {"metricsPort": 0},
                "vectorDatabase": {"dimension": dimension},
            }
        )
        resources = await open_edge(config)
        node = resources.node
        node.agent.apply(PolicyBundleRecord(version=1, policies=(("bench.cedar", POLICY),)))
        await node.start()
        server, port = create_server(config, node)
        server.server.add_generic_rpc_handlers((_echo_handler(),))
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        echo = channel.unary_unary(ECHO_METHOD)
        request = edge_pb2.AuthorizeRequest(principal='User::"alice"', action='Action::"approve"', resource='D::"x"')
        request.context.update({"risk": 1})
        payload = request.SerializeToString()
        try:
            for _ in range(200):  # warm up both paths
                await echo(payload)
                await stub.Authorize(request)
            echo_rate, echo_lat = await _run_concurrent(lambda: echo(payload), calls, 32)
            auth_rate, auth_lat = await _run_concurrent(lambda: stub.Authorize(request), calls, 32)
            echo_p50, auth_p50 = statistics.median(echo_lat), statistics.median(auth_lat)
            print(f"echo            {echo_rate:9.0f} calls/s   p50 {echo_p50:6.2f} ms   (32 in flight)")
            print(f"Authorize       {auth_rate:9.0f} calls/s   p50 {auth_p50:6.2f} ms")
            print(
                f"  ratio         {auth_rate / echo_rate:9.2f} of echo throughput (goal >= 0.70); "
                f"p50 - echo p50 = {auth_p50 - echo_p50:+.2f} ms (goal <= +0.20)"
            )

            data = _clustered(vector_count, dimension)
            started = time.perf_counter()
            for start in range(0, vector_count, 1000):
                chunk = [
                    VectorRecord(f"v{start + i}", row.tolist(), region="bench")
                    for i, row in enumerate(data[start : start + 1000])
                ]
                await asyncio.to_thread(resources.store.upsert, chunk, cached=False)
            await asyncio.to_thread(resources.store.optimize)
            elapsed = time.perf_counter() - started
            print(f"loaded          {vector_count} x {dimension} vectors + optimize in {elapsed:.1f} s")
            queries = _clustered(200, dimension, seed=11)
            search_lat: list[float] = []
            echo_seq: list[float] = []
            for row in queries:
                search = edge_pb2.SearchVectorsRequest(embedding=row.tolist(), limit=10)
                t0 = time.perf_counter()
                reply = await stub.SearchVectors(search)
                search_lat.append((time.perf_counter() - t0) * 1000)
                assert reply.local_count == 10
                t0 = time.perf_counter()
                await echo(search.SerializeToString())
                echo_seq.append((time.perf_counter() - t0) * 1000)
            search_p50, echo_seq_p50 = statistics.median(search_lat), statistics.median(echo_seq)
            print(f"echo (same 1.5 KB payload, sequential)        p50 {echo_seq_p50:6.2f} ms")
            print(f"SearchVectors top-10, local                   p50 {search_p50:6.2f} ms")
            print(f"  p50 - echo p50 = {search_p50 - echo_seq_p50:+.2f} ms (goal <= +1.00)")
        finally:
            await channel.close()
            await server.stop(0)
            await node.shutdown(0.1)
            await resources.close()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in seconds")
    asyncio.run(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
