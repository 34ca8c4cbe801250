"""Episodic memory (append, pages, snapshots) and the vector graph (pgvector)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.wire.canonical import sign_batch
from central_svc import snapshots
from central_svc.store.database import Database
from central_svc.store.episodes import PostgresEpisodeStore
from tests.central.conftest import Central, Edge, StartCentral, now_stamp
from tests.support.postgres import TEST_VECTOR_DIMENSION

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def episode(n: int, session: str = "s1") -> memory_pb2.Episode:
    return memory_pb2.Episode(
        episode_id=f"ep-{n:03d}",
        session_id=session,
        content=f"event {n}",
        embedding=[float(n + 1)] + [0.5] * (TEST_VECTOR_DIMENSION - 1),
        occur_time=now_stamp(T0 + timedelta(seconds=n)),
    )


async def append(central: Central, edge: Edge, episodes: list[memory_pb2.Episode]) -> sync_pb2.BatchAck:
    request = sync_pb2.AppendEpisodesRequest(header=edge.header("episodes"), episodes=episodes)
    sign_batch(request, edge.key)
    response = await central.sync.AppendEpisodes(request, metadata=edge.metadata)
    return response.ack


async def list_all(central: Central, edge: Edge, **filters: Any) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await central.sync.ListEpisodes(
            sync_pb2.ListEpisodesRequest(page_size=7, page_token=token, **filters), metadata=edge.metadata
        )
        assert len(page.episodes) <= 7
        ids += [e.episode_id for e in page.episodes]
        token = page.next_page_token
        if not token:
            return ids


async def test_append_is_idempotent_and_pages_cover_everything_once(central: Central) -> None:
    edge = Edge("edge-a")
    ack = await append(central, edge, [episode(n) for n in range(20)])
    assert (ack.processed, ack.failed) == (20, 0)
    ack = await append(central, edge, [episode(n) for n in range(15, 25)])
    assert ack.processed == 10
    assert await list_all(central, edge) == [f"ep-{n:03d}" for n in range(25)]
    assert await list_all(central, edge, start_time=now_stamp(T0 + timedelta(seconds=10))) == [
        f"ep-{n:03d}" for n in range(10, 25)
    ]
    assert await list_all(central, Edge("edge-z", tenant_id="other")) == []


async def test_bad_embedding_fails_alone(central: Central) -> None:
    edge = Edge("edge-a")
    bad = episode(1)
    del bad.embedding[:]
    bad.embedding.extend([1.0, 2.0])
    ack = await append(central, edge, [episode(0), bad])
    assert [(f.item_id, f.reason) for f in ack.failures] == [("ep-001", "BAD_VECTOR")]
    assert await list_all(central, edge) == ["ep-000"]


async def test_page_token_from_another_query_is_invalid(central: Central) -> None:
    edge = Edge("edge-a")
    await append(central, edge, [episode(n) for n in range(10)])
    page = await central.sync.ListEpisodes(sync_pb2.ListEpisodesRequest(page_size=3), metadata=edge.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.ListEpisodes(
            sync_pb2.ListEpisodesRequest(page_size=3, page_token=page.next_page_token, session_id="other"),
            metadata=edge.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    tampered = page.next_page_token[:-2] + ("AA" if not page.next_page_token.endswith("AA") else "BB")
    with pytest.raises(grpc.aio.AioRpcError):
        await central.sync.ListEpisodes(
            sync_pb2.ListEpisodesRequest(page_size=3, page_token=tampered), metadata=edge.metadata
        )


async def test_snapshot_restore_round_trip(
    central: Central, start_central: StartCentral, tmp_path: Path, database_url: str, postgres_server: Any
) -> None:
    edge = Edge("edge-a")
    await append(central, edge, [episode(n) for n in range(12)])
    manifest = await snapshots.create(central.deps.episode_store, tmp_path)
    assert manifest.episodes == 12
    with gzip.open(manifest.path / snapshots.DATA_FILE) as lines:
        assert sum(1 for _ in lines) == 12
    # Restore into an empty database (another fresh test database on the same server).
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE restore_target TEMPLATE aeterna_template")
    try:
        target = Database(postgres_server.url_for("restore_target"), max_size=2)
        await target.open()
        try:
            store = PostgresEpisodeStore(target)
            assert await snapshots.restore(store, manifest.path) == 12
            assert await snapshots.restore(store, manifest.path) == 0
        finally:
            await target.close()
        restored = await start_central(postgres_server.url_for("restore_target"))
        assert await list_all(restored, edge) == [f"ep-{n:03d}" for n in range(12)]
        original = await central.sync.ListEpisodes(sync_pb2.ListEpisodesRequest(page_size=100), metadata=edge.metadata)
        copy = await restored.sync.ListEpisodes(sync_pb2.ListEpisodesRequest(page_size=100), metadata=edge.metadata)
        assert list(copy.episodes) == list(original.episodes)
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
            connection.execute("DROP DATABASE IF EXISTS restore_target WITH (FORCE)")


def vector(vector_id: str, direction: int, region: str = "eu-west-1") -> memory_pb2.Vector:
    values = [0.01] * TEST_VECTOR_DIMENSION
    values[direction] = 1.0
    return memory_pb2.Vector(vector_id=vector_id, values=values, region=region, update_time=now_stamp())


async def sync_vectors(central: Central, edge: Edge, vectors: list[memory_pb2.Vector]) -> sync_pb2.BatchAck:
    request = sync_pb2.SyncVectorsRequest(header=edge.header("vectors"), vectors=vectors)
    sign_batch(request, edge.key)
    [response] = [r async for r in central.sync.SyncVectors(iter([request]), metadata=edge.metadata)]
    return response.ack


async def test_vectors_sync_and_search_with_filters(central: Central) -> None:
    edge = Edge("edge-a")
    nan = vector("nan", 0)
    nan.values[1] = float("nan")
    ack = await sync_vectors(
        central,
        edge,
        [vector("v0", 0), vector("v1", 1), vector("v0b", 0, region="us-west-2"), vector("short", 0), nan],
    )
    assert ack.failed == 1
    assert ack.failures[0].item_id == "nan"
    assert ack.failures[0].reason == "BAD_VECTOR"
    query = [0.0] * TEST_VECTOR_DIMENSION
    query[0] = 1.0
    found = await central.sync.SearchVectors(
        sync_pb2.SearchVectorsRequest(embedding=query, limit=2, score_threshold=0.5), metadata=edge.metadata
    )
    assert {r.vector.vector_id for r in found.results} <= {"v0", "v0b", "short"}
    assert all(r.score >= 0.5 for r in found.results)
    assert [r.score for r in found.results] == sorted((r.score for r in found.results), reverse=True)
    filtered = await central.sync.SearchVectors(
        sync_pb2.SearchVectorsRequest(
            embedding=query,
            limit=10,
            score_threshold=0.5,
            filter=sync_pb2.VectorFilter(exclude_regions=["us-west-2"], exclude_vector_ids=["short"]),
        ),
        metadata=edge.metadata,
    )
    assert [r.vector.vector_id for r in filtered.results] == ["v0"]
    other_tenant = await central.sync.SearchVectors(
        sync_pb2.SearchVectorsRequest(embedding=query, limit=10), metadata=Edge("x", tenant_id="t9").metadata
    )
    assert list(other_tenant.results) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.SearchVectors(
            sync_pb2.SearchVectorsRequest(embedding=[1.0], limit=3), metadata=edge.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
