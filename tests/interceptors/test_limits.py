"""Rate limits per identity (in process and in a real Redis), stream messages, concurrent streams, all RPC shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_client.channel import open_central_channel
from aeterna_client.credentials import ApiKeyCredentials, NoCredentials
from interceptors.authenticators import hash_api_key
from interceptors.ratelimit import RedisTokenBucketLimiter, TokenBucketLimiter, limiter_from_config
from tests.interceptors.conftest import (
    Outgoing,
    ServeFactory,
    edge_config,
    error_reason,
    gather_limited,
    server_config,
    shape_calls,
    status_detail,
)
from tests.support.tls import TlsMaterial

KEYS = {"edge-a": "sk-limits-edge-a", "edge-b": "sk-limits-edge-b"}
FLOOD_DEADLINE = 60.0
"""A flood goes on past its planned seconds until it has been refused once, but not beyond this."""


def _keys_file(tmp_path: Path) -> str:
    path = tmp_path / "keys.yaml"
    lines = ["keys:"]
    for agent, key in KEYS.items():
        lines += [f"  - sha256: {hash_api_key(key)}", f"    agentId: {agent}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _server(tls: TlsMaterial, tmp_path: Path, sync: dict[str, Any]) -> Any:
    return server_config(
        tls,
        {"sync": {"auth": {"method": "apiKey", "apiKeysFile": _keys_file(tmp_path)}, **sync}},
    )


def _channel(tls: TlsMaterial, port: int, agent: str) -> aio.Channel:
    return open_central_channel(edge_config(tls, port), credentials=ApiKeyCredentials(KEYS[agent]))


async def test_flood_is_limited_to_rate_and_another_identity_is_unaffected(
    serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path
) -> None:
    rate, burst, seconds = 100, 20, 3.0
    running = await serve(_server(tls_material, tmp_path, {"rateLimit": f"{rate}/sec", "rateLimitBurst": burst}))
    request = sync_pb2.SearchVectorsRequest(limit=1)
    async with (
        _channel(tls_material, running.port, "edge-a") as flood,
        _channel(tls_material, running.port, "edge-b") as calm,
    ):
        flood_stub = sync_pb2_grpc.SyncServiceStub(flood)
        calm_stub = sync_pb2_grpc.SyncServiceStub(calm)

        async def flood_loop() -> tuple[int, int, list[grpc.RpcError], float]:
            # Offer 300 requests a second (3x the limit) for `seconds`, 16 in flight; a machine too
            # slow to outrun the limit in that time keeps going until it has been refused once.
            allowed = refused = 0
            errors: list[grpc.RpcError] = []
            start = time.monotonic()
            sent = 0
            while (elapsed := time.monotonic() - start) < seconds or (not refused and elapsed < FLOOD_DEADLINE):
                due = int((time.monotonic() - start) * 300) + 1
                batch = [flood_stub.SearchVectors(request) for _ in range(max(0, min(16, due - sent)))]
                sent += len(batch)
                for result in await gather_limited(batch, 16):
                    if isinstance(result, grpc.RpcError):
                        refused += 1
                        errors.append(result)
                    else:
                        allowed += 1
                if not batch:
                    await asyncio.sleep(0.002)
            return allowed, refused, errors, time.monotonic() - start

        async def calm_loop() -> list[Any]:
            # 20 requests a second, well under the limit.
            results = []
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                results += await gather_limited([calm_stub.SearchVectors(request)], 1)
                await asyncio.sleep(0.05)
            return results

        (allowed, refused, errors, elapsed), calm_results = await asyncio.gather(flood_loop(), calm_loop())

    offered = allowed + refused
    ceiling = rate * elapsed + burst
    print(f"flood: offered {offered}, allowed {allowed}, refused {refused} in {elapsed:.2f}s (ceiling {ceiling:.0f})")
    # Counts only, nothing a slow machine can fail: the flood was refused, so it emptied the bucket
    # (at least `burst` allowed), and never more was allowed than the bucket held over the whole
    # run (10 % for clocks). The refill arithmetic is pinned with a fake clock in
    # test_local_bucket_refills_with_its_clock.
    assert refused > 0, f"the flood never exceeded the limit ({offered} offered in {elapsed:.2f}s)"
    assert allowed >= burst, (allowed, burst, offered)
    assert allowed <= 1.1 * ceiling, (allowed, ceiling, offered)
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert {error_reason(e) for e in errors} == {"RATE_LIMITED"}
    retry = status_detail(errors[0], error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToNanoseconds() > 0
    quota = status_detail(errors[0], error_details_pb2.QuotaFailure)
    assert quota is not None
    assert quota.violations[0].subject == "default/edge-a"
    assert calm_results
    assert not any(isinstance(r, grpc.RpcError) for r in calm_results)
    assert running.handled("SearchVectors", "RESOURCE_EXHAUSTED") == refused


async def test_health_checks_are_exempt(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> None:
    running = await serve(_server(tls_material, tmp_path, {"rateLimit": "1/sec", "rateLimitBurst": 1}))
    async with open_central_channel(edge_config(tls_material, running.port), credentials=NoCredentials()) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            await health.Check(health_pb2.HealthCheckRequest())


async def test_stream_messages_count(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> None:
    running = await serve(_server(tls_material, tmp_path, {"rateLimit": "1/sec", "rateLimitBurst": 5}))
    async with _channel(tls_material, running.port, "edge-a") as channel:
        # Lock-step like the edge's sync (send a batch, await its ack).
        outgoing = Outgoing()
        call = shape_calls(channel).stream_stream(outgoing.requests())
        echoed = 0

        async def lock_step() -> None:
            nonlocal echoed
            for _ in range(50):
                outgoing.send(b"m")
                assert await call.read() == b"m"
                echoed += 1

        with pytest.raises(grpc.RpcError) as raised:
            await lock_step()
        outgoing.close()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(raised.value) == "RATE_LIMITED"
    # One token for opening the stream, one per message: four messages fit in a burst of five.
    assert echoed == 4


async def test_concurrent_streams_per_identity(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> None:
    running = await serve(_server(tls_material, tmp_path, {"maxStreamsPerIdentity": 2}))
    async with _channel(tls_material, running.port, "edge-a") as a, _channel(tls_material, running.port, "edge-b") as b:
        outgoing: list[Outgoing] = []

        def open_stream(channel: aio.Channel, first: bytes) -> Any:
            outgoing.append(Outgoing())
            outgoing[-1].send(first)
            return shape_calls(channel).stream_stream(outgoing[-1].requests())

        try:
            open_streams = []
            for _ in range(2):
                call = open_stream(a, b"x")
                assert await call.read() == b"x"
                open_streams.append(call)
            third = open_stream(a, b"x")
            with pytest.raises(grpc.RpcError) as raised:
                await third.read()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(raised.value) == "TOO_MANY_STREAMS"
            # Another identity is not affected.
            other = open_stream(b, b"y")
            assert await other.read() == b"y"
            # Closing one frees a slot.
            outgoing[0].close()
            assert await open_streams[0].read() == aio.EOF
            again = open_stream(a, b"z")
            assert await again.read() == b"z"
        finally:
            for requests in outgoing:
                requests.close()


async def test_all_four_shapes_authenticate(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> None:
    running = await serve(_server(tls_material, tmp_path, {}))
    async with (
        _channel(tls_material, running.port, "edge-b") as good,
        open_central_channel(edge_config(tls_material, running.port), credentials=ApiKeyCredentials("sk-wrong")) as bad,
    ):
        ok, refused = shape_calls(good), shape_calls(bad)
        assert await ok.unary_unary(b"x") == b"edge-b"
        assert [m async for m in ok.unary_stream(b"x")] == [b"edge-b"] * 3
        assert await ok.stream_unary(iter([b"1", b"2"])) == b"edge-b:2"
        assert [m async for m in ok.stream_stream(iter([b"1", b"2"]))] == [b"1", b"2"]

        calls: list[Awaitable[object]] = [
            refused.unary_unary(b"x"),
            _drain(refused.unary_stream(b"x")),
            refused.stream_unary(iter([b"1"])),
            _drain(refused.stream_stream(iter([b"1"]))),
        ]
        for coroutine in calls:
            with pytest.raises(grpc.RpcError) as raised:
                await coroutine
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_reason(raised.value) == "INVALID_API_KEY"


async def _drain(call: AsyncIterable[bytes]) -> list[bytes]:
    return [item async for item in call]


# --- the limiters themselves ---------------------------------------------------------------


async def test_redis_limiter_is_shared_by_replicas(limiter_redis_url: str) -> None:
    rate, burst, seconds = 50.0, 10.0, 2.0
    replicas = [RedisTokenBucketLimiter(limiter_redis_url, rate, burst) for _ in range(2)]
    key = f"shared-{time.monotonic_ns()}"
    allowed = offered = 0
    start = time.monotonic()
    try:
        # As in the gRPC flood: past `seconds` only on a machine too slow to have been refused yet.
        while (elapsed := time.monotonic() - start) < seconds or (allowed == offered and elapsed < FLOOD_DEADLINE):
            # Both replicas serve the same identity; together they must hold one limit.
            waits = await asyncio.gather(*(r.acquire(key) for r in replicas for _ in range(4)))
            offered += len(waits)
            allowed += sum(1 for w in waits if w == 0.0)
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - start
        # Another identity has its own bucket.
        assert await replicas[0].acquire(key + "-other") == 0.0
    finally:
        for replica in replicas:
            await replica.close()
    ceiling = rate * elapsed + burst
    print(f"shared: offered {offered}, allowed {allowed} in {elapsed:.2f}s (ceiling {ceiling:.0f})")
    # Counts only (see the gRPC flood above); Redis' TIME is another clock than ours, hence the 10 %.
    # Its refill arithmetic is pinned in test_redis_bucket_holds_its_burst_and_prices_the_wait.
    assert allowed < offered, f"the replicas were never refused ({offered} offered in {elapsed:.2f}s)"
    assert allowed >= burst, (allowed, burst, offered)
    assert allowed <= 1.1 * ceiling, (allowed, ceiling, offered)


async def test_redis_bucket_holds_its_burst_and_prices_the_wait(limiter_redis_url: str) -> None:
    """The Redis bucket's arithmetic, shared by two replicas.

    The Lua script reads Redis' own clock (``TIME``), so there is no clock to fake as in
    test_local_bucket_refills_with_its_clock. Instead the rate is so low that whatever the test
    takes, the refill is bounded by the time measured around it.
    """
    rate, burst = 0.001, 3.0
    replicas = [RedisTokenBucketLimiter(limiter_redis_url, rate, burst) for _ in range(2)]
    key = f"priced-{time.monotonic_ns()}"
    start = time.monotonic()
    try:
        waits = [await replicas[n % 2].acquire(key) for n in range(5)]
        elapsed = time.monotonic() - start
    finally:
        for replica in replicas:
            await replica.close()
    # The full bucket of three, taken across both replicas; then refused with the wait for one token.
    assert waits[:3] == [0.0, 0.0, 0.0]
    refilled = 1.1 * rate * elapsed  # at most this much refilled while the test ran (10 % for clocks)
    for wait in waits[3:]:
        assert (1.0 - refilled) / rate <= wait <= 1.0 / rate, (waits, elapsed)


async def test_redis_limiter_in_the_chain(
    serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path, limiter_redis_url: str
) -> None:
    config = _server(
        tls_material, tmp_path, {"rateLimit": "1/sec", "rateLimitBurst": 3, "rateLimitRedisUrl": limiter_redis_url}
    )
    limiter = limiter_from_config(config.sync)
    assert isinstance(limiter, RedisTokenBucketLimiter)
    running = await serve(config, limiter=limiter)
    try:
        async with _channel(tls_material, running.port, "edge-a") as channel:
            stub = sync_pb2_grpc.SyncServiceStub(channel)
            results = [await gather_limited([stub.SearchVectors(sync_pb2.SearchVectorsRequest())], 1) for _ in range(6)]
    finally:
        await limiter.close()
    codes = [r[0].code() if isinstance(r[0], grpc.RpcError) else grpc.StatusCode.OK for r in results]
    assert codes[:3] == [grpc.StatusCode.OK] * 3
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]


async def test_redis_limiter_falls_back_when_redis_is_down(tmp_path: Path) -> None:
    limiter = RedisTokenBucketLimiter(f"unix://{tmp_path}/nothing.sock", 1.0, 2.0)
    try:
        waits = [await limiter.acquire("k") for _ in range(3)]
    finally:
        await limiter.close()
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0


async def test_local_bucket_refills_with_its_clock() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(10, 2, clock=lambda: now[0])
    assert [await limiter.acquire("k") for _ in range(3)][:2] == [0.0, 0.0]
    assert await limiter.acquire("k") == pytest.approx(0.1)
    now[0] += 0.1
    assert await limiter.acquire("k") == 0.0
