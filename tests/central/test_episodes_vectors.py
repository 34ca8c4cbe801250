"""Episodic memory (append, pages, snapshots) and the vector graph (pgvector)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.errors import InvalidArgument
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


# float32 values a careless round trip bends: thirds, tenths, the smallest normal, subnormals, a large one.
AWKWARD = np.array([1 / 3, -0.1, 2.0**-126, 1e-45, 12345.678, -7.006492e-44, 1.0000001, -1.5e18], dtype=np.float32)[
    :TEST_VECTOR_DIMENSION
]


def bits(values: Any) -> list[int]:
    """The float32 bit patterns of ``values`` (exact equality, -0.0 and 0.0 told apart)."""
    return np.asarray(values, dtype=np.float32).view(np.uint32).tolist()  # type: ignore[no-any-return]


async def test_vectors_come_back_from_central_bit_for_bit(central: Central) -> None:
    """SyncVectors → PostgreSQL (pgvector binary) → SearchVectors: each float32 exactly as the edge sent it."""
    edge = Edge("edge-a")
    sent = vector("exact", 0)
    del sent.values[:]
    sent.values.extend(AWKWARD.tolist())
    ack = await sync_vectors(central, edge, [sent])
    assert (ack.processed, ack.failed) == (1, 0)
    found = await central.sync.SearchVectors(
        sync_pb2.SearchVectorsRequest(embedding=AWKWARD.tolist(), limit=1), metadata=edge.metadata
    )
    [hit] = found.results
    assert hit.vector.vector_id == "exact"
    assert bits(hit.vector.values) == bits(AWKWARD)
    assert hit.score == pytest.approx(1.0, abs=1e-6)


async def test_episode_embeddings_are_stored_exactly_and_survive_a_snapshot(
    central: Central, tmp_path: Path, postgres_server: Any
) -> None:
    """An episode's embedding is the float32 the edge sent, in the database and after snapshot → restore."""
    edge = Edge("edge-a")
    sent = episode(1)
    del sent.embedding[:]
    sent.embedding.extend(AWKWARD.tolist())
    ack = await append(central, edge, [sent])
    assert (ack.processed, ack.failed) == (1, 0)

    async def stored(database: Database) -> list[int]:
        async with database.connection() as connection:
            cursor = await connection.execute(
                "SELECT embedding FROM episodes WHERE episode_id = %s", [sent.episode_id], binary=True
            )
            row = await cursor.fetchone()
        assert row is not None
        return bits(row[0].to_numpy())

    assert await stored(central.deps.database) == bits(AWKWARD)
    manifest = await snapshots.create(central.deps.episode_store, tmp_path)
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE restore_exact TEMPLATE aeterna_template")
    try:
        target = Database(postgres_server.url_for("restore_exact"), max_size=2)
        await target.open()
        try:
            assert await snapshots.restore(PostgresEpisodeStore(target), manifest.path) == 1
            assert await stored(target) == bits(AWKWARD)
        finally:
            await target.close()
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
            connection.execute("DROP DATABASE IF EXISTS restore_exact WITH (FORCE)")


async def test_a_malformed_snapshot_embedding_is_refused_by_name(tmp_path: Path, database_url: str) -> None:
    """A snapshot line whose embedding is no vector: BAD_SNAPSHOT naming it, not a numpy traceback."""
    database = Database(database_url, max_size=2)
    await database.open()
    try:
        row = ("ep-x", "default", "s1", "edge-a", "c", "[1,two,3]", T0, b"")
        with pytest.raises(InvalidArgument) as caught:
            await PostgresEpisodeStore(database).import_rows([row])
        assert caught.value.reason == "BAD_SNAPSHOT"
        assert "'[1,two,3]'" in str(caught.value)
    finally:
        await database.close()
