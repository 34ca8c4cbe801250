"""Store failures surface as the project's own errors, mapped at the adapter, and so as the same statuses.

A stopped redis-server and a locked or unopenable SQLite outbox are real here
(a private redis-server from ``tests.support.redis``, real database files):
the adapters raise ``Unavailable`` / ``ResourceExhausted`` with the reasons
and messages users saw when the error table still knew the drivers, and the
gRPC error table (which imports no driver any more) turns them into
UNAVAILABLE / RESOURCE_EXHAUSTED with ``ErrorInfo``.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import ERROR_DOMAIN, ResourceExhausted, Unavailable
from edge_svc.deps import open_edge
from edge_svc.records import Channel
from edge_svc.server import create_server
from edge_svc.store.cache import RedisCache
from edge_svc.store.outbox import UNAVAILABLE_MESSAGE, ChannelLimits, SqliteOutbox
from tests.edge.conftest import closed_port, edge_document
from tests.support.redis import _start as start_redis

LIMITS = {channel: ChannelLimits(max_items=100, ttl_seconds=3600) for channel in Channel}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test alone, which the test may stop."""
    directory = tmp_path / "redis"
    directory.mkdir()
    process, url = start_redis(directory)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


@pytest.fixture
async def private_cache(
    private_redis: tuple[subprocess.Popen[bytes], str],
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, RedisCache]]:
    """The cache adapter on the private redis-server (the server, its URL, the adapter)."""
    process, url = private_redis
    cache = RedisCache(url)
    try:
        yield process, url, cache
    finally:
        await cache.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(10)


def _error_info(error: aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status")


async def test_a_stopped_redis_server_is_unavailable_from_the_cache(
    private_cache: tuple[subprocess.Popen[bytes], str, RedisCache],
) -> None:
    process, _, cache = private_cache
    await cache.set("k", b"v", 10_000)
    _stop(process)
    for call in (cache.get("k"), cache.set("k", b"w", 10_000), cache.dirty_count("dirty")):
        with pytest.raises(Unavailable) as caught:
            await call
        assert caught.value.reason == "CACHE_UNAVAILABLE"
        assert "the edge's cache cannot be reached" in caught.value.message
    with pytest.raises(Unavailable, match=r"cannot be reached \(session write\); nothing was stored"):
        await cache.update("s", "p", "dirty", "s", lambda value, pending: (b"x", pending))


async def test_a_full_session_store_is_resource_exhausted_from_the_cache(
    private_cache: tuple[subprocess.Popen[bytes], str, RedisCache],
) -> None:
    _, url, cache = private_cache
    await cache.update("s0", "p0", "dirty", "s0", lambda value, pending: (b"x", pending))
    admin = redis.Redis.from_url(url)
    try:
        admin.config_set("maxmemory", "1")  # below what is used: every write is refused
    finally:
        admin.close()
    with pytest.raises(ResourceExhausted) as caught:
        await cache.update("s1", "p1", "dirty", "s1", lambda value, pending: (b"x" * 1000, pending))
    assert caught.value.reason == "SESSION_STORE_FULL"
    assert caught.value.retry_after == 5.0


async def test_a_held_write_lock_is_unavailable_from_the_outbox_and_nothing_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = SqliteOutbox(path, LIMITS)
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer (a stuck requeue, a backup) holds the database
        with pytest.raises(Unavailable) as caught:
            outbox.enqueue(Channel.DECISIONS, [{"id": "d1"}])  # after SQLite's busy timeout
        assert caught.value.reason == "OUTBOX_UNAVAILABLE"
        assert caught.value.message == UNAVAILABLE_MESSAGE
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        assert outbox.pending(Channel.DECISIONS, 10) == []
        assert outbox.enqueue(Channel.DECISIONS, [{"id": "d1"}]).sequence == 1  # usable again, nothing half-done
    finally:
        other.close()
        outbox.close()


def test_an_outbox_sqlite_cannot_open_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.mkdir()  # a directory where the database file should be
    with pytest.raises(Unavailable) as caught:
        SqliteOutbox(path, LIMITS)
    assert caught.value.reason == "OUTBOX_UNAVAILABLE"
    assert str(path) in caught.value.message
    assert "cannot be opened" in caught.value.message


@pytest.fixture
async def edge_on_private_redis(
    tmp_path: Path, private_redis: tuple[subprocess.Popen[bytes], str]
) -> AsyncIterator[tuple[edge_pb2_grpc.EdgeServiceAsyncStub, subprocess.Popen[bytes], Path]]:
    process, url = private_redis
    document = edge_document(tmp_path / "edge", closed_port())
    document["cache"] = {"url": url}
    config = AeternaConfig.model_validate(document)
    deps = await open_edge(config)
    server, port = create_server(config, deps.node)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield edge_pb2_grpc.EdgeServiceStub(channel), process, tmp_path / "edge" / "outbox.sqlite3"
    finally:
        await channel.close()
        await server.stop(0)
        await deps.close()


async def test_store_failures_reach_the_caller_as_unavailable_with_their_reasons(
    edge_on_private_redis: tuple[edge_pb2_grpc.EdgeServiceAsyncStub, subprocess.Popen[bytes], Path],
) -> None:
    stub, redis_process, outbox_path = edge_on_private_redis
    authorize = edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"b"', resource='R::"c"')
    assert (await stub.Authorize(authorize)).offline

    holder = sqlite3.connect(str(outbox_path), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(aio.AioRpcError) as outbox_error:
            await stub.Authorize(authorize)  # the decision must be committed before the answer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert outbox_error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert outbox_error.value.details() == UNAVAILABLE_MESSAGE
    info = _error_info(outbox_error.value)
    assert (info.reason, info.domain) == ("OUTBOX_UNAVAILABLE", ERROR_DOMAIN)

    _stop(redis_process)
    value = struct_pb2.Value(string_value="x")
    with pytest.raises(aio.AioRpcError) as cache_error:
        await stub.SetWorkingMemory(edge_pb2.SetWorkingMemoryRequest(key="k", value=value))
    assert cache_error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cache_error.value.details() == "the edge's cache cannot be reached (write); nothing was stored"
    assert _error_info(cache_error.value).reason == "CACHE_UNAVAILABLE"
