"""The edge's vector search: ``qdrant.hnsw`` as config, a shard reopened under changed settings, and the search
running off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from aeterna_shared.config import AeternaConfig
from aeterna_shared.config.model import QdrantCache, QdrantHnsw
from edge_svc.records import ScoredRecord, VectorRecord
from edge_svc.store.vectors import QdrantEdgeStore
from edge_svc.vectors import VectorIndex, VectorSettings

DIM = 32


def clustered(count: int, seed: int = 3) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, DIM))
    return (centers[rng.integers(0, 8, size=count)] + 0.2 * rng.normal(size=(count, DIM))).astype(np.float32)


def load(store: QdrantEdgeStore, data: np.ndarray[Any, Any]) -> None:
    store.upsert([VectorRecord(f"v{i}", row.tolist(), region="r") for i, row in enumerate(data)], cached=False)
    store.optimize()


def test_hnsw_settings_are_config_keys_with_bounds() -> None:
    config = AeternaConfig.model_validate({"qdrant": {"hnsw": {"ef": 96, "m": 24, "efConstruct": 200}}})
    assert config.qdrant.hnsw == QdrantHnsw(ef=96, m=24, ef_construct=200)
    assert AeternaConfig.model_validate({}).qdrant.hnsw == QdrantHnsw(ef=96, m=16, ef_construct=100)
    with pytest.raises(ValidationError) as caught:
        AeternaConfig.model_validate({"qdrant": {"hnsw": {"ef": 2}}})
    assert "qdrant.hnsw.ef" in str(caught.value)


def test_a_built_shard_reopens_under_other_hnsw_settings_and_still_finds_its_vectors(tmp_path: Path) -> None:
    """An operator who changes qdrant.hnsw keeps the shard: it opens, and every stored vector is found first."""
    data = clustered(3000)
    store = QdrantEdgeStore(tmp_path / "vectors", DIM, QdrantHnsw(m=8, ef_construct=32, ef=16))
    load(store, data)
    store.close()
    reopened = QdrantEdgeStore(tmp_path / "vectors", DIM, QdrantHnsw(m=32, ef_construct=200, ef=128))
    try:
        assert reopened.count() == 3000
        for i in range(0, 3000, 300):
            hits = reopened.search(data[i].tolist(), 10)
            assert len(hits) == 10
            assert hits[0].vector.vector_id == f"v{i}"
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        reopened.close()


async def test_the_event_loop_keeps_running_while_a_search_runs(tmp_path: Path) -> None:
    """The local search runs in a worker thread: loop tasks make progress between its start and its end.

    The search below waits (at most 30 s) for a loop task to tick three times. Run on the event loop, as
    before, it would hold the loop for all of it and see no tick.
    """
    data = clustered(3000)
    store = QdrantEdgeStore(tmp_path / "vectors", DIM)
    load(store, data)
    loop = asyncio.get_running_loop()
    ticks = 0
    seen_during_search: list[int] = []
    original = store.search

    def search(embedding: Sequence[float], limit: int) -> list[ScoredRecord]:
        at_start, deadline = ticks, time.monotonic() + 30
        while ticks < at_start + 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen_during_search.append(ticks - at_start)
        return original(embedding, limit)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    store.search = search  # type: ignore[method-assign]
    settings = VectorSettings("r", DIM, QdrantCache(enabled=False), 1.0)
    index = VectorIndex(settings, store, None, None, None)  # type: ignore[arg-type]  # a full local answer needs no link
    task = loop.create_task(ticker())
    try:
        result = await index.search(data[0].tolist(), 5, -1.0)
        assert len(seen_during_search) == 1
        assert seen_during_search[0] >= 3
        assert result.local_count == 5
        assert result.hits[0].vector.vector_id == "v0"
    finally:
        task.cancel()
        await index.close()
        store.close()
