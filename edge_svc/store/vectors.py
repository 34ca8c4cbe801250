"""The Qdrant Edge adapter of the ``VectorStore`` port: the edge's vector subset on disk.

Qdrant point ids must be integers or UUIDs, while our vector ids are any
string, so each point's id is a UUIDv5 of the vector id and the original id
travels in the payload. Search hits carry ids, region, payload and time but
not the embedding itself: agents rarely need it back and leaving it out keeps
the local search path short.

The HNSW graph (``m``, ``ef_construct``) and the search beam (``hnsw_ef``)
come from ``qdrant.hnsw``: they trade recall for latency, and the defaults were
chosen by measuring both on 100k clustered 384-d vectors (docs/performance.md,
Vectors). ``query`` releases the GIL while it walks the graph, so the caller
may run it in a worker thread without stalling the event loop's other work.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from aeterna_shared.config.model import QdrantHnsw
from edge_svc.records import ScoredRecord, VectorRecord

_NAMESPACE = uuid.UUID("6f1c1f52-5a51-4d7e-9a55-6a1f3f0e2b10")
_VECTOR_NAME = ""


def point_id(vector_id: str) -> str:
    """The Qdrant point id of a vector id."""
    return str(uuid.uuid5(_NAMESPACE, vector_id))


class QdrantEdgeStore:
    """A Qdrant Edge shard holding the vectors this edge wrote or cached."""

    def __init__(self, path: Path, dimension: int, hnsw: QdrantHnsw | None = None) -> None:
        hnsw = hnsw or QdrantHnsw()
        self._dimension = dimension
        self._ef = hnsw.ef
        config = qe.EdgeConfig(
            vectors={_VECTOR_NAME: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            # Used by the next index build (optimize); a reopened shard keeps its built graph until then.
            hnsw_config=qe.HnswIndexConfig(m=hnsw.m, ef_construct=hnsw.ef_construct, full_scan_threshold=10_000),
            # One search thread per query: the shard's segments are searched one after the other instead of
            # fanned out. On the 2 shared cores measured that is faster (0.58 ms vs 0.7-0.95 ms p50 at 100k,
            # hnsw_ef 64-128) and it stops one query from taking every core; concurrent queries still run
            # side by side on the index's own search threads (edge_svc/vectors.py).
            max_search_threads=1,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # A shard directory with segments is reopened; a new one is created.
        if (path / "segments").exists() or (path.exists() and any(path.iterdir())):
            self._shard = qe.EdgeShard.load(str(path), config)
        else:
            self._shard = qe.EdgeShard.create(str(path), config)
        # optimize() rebuilds segments; writes are serialized against it.
        self._write_lock = threading.Lock()

    def upsert(self, records: Sequence[VectorRecord], *, cached: bool) -> None:
        """Insert or replace vectors."""
        points = [
            qe.Point(
                point_id(r.vector_id),
                list(r.values),
                {"_id": r.vector_id, "_region": r.region, "_t": r.update_time, "_cached": cached, "p": r.payload},
            )
            for r in records
        ]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, embedding: Sequence[float], limit: int) -> list[ScoredRecord]:
        """Top ``limit`` by cosine similarity."""
        hits = self._shard.query(
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(list(embedding)),
                with_payload=True,
                with_vector=False,
                # qdrant.hnsw.ef: recall against time, measured in docs/performance.md (Vectors).
                params=qe.SearchParams(hnsw_ef=max(self._ef, limit)),
            )
        )
        return [ScoredRecord(_record(hit.payload or {}), float(hit.score), "local") for hit in hits]

    def delete(self, vector_ids: Sequence[str]) -> None:
        """Remove vectors by id."""
        if vector_ids:
            with self._write_lock:
                self._shard.update(qe.UpdateOperation.delete_points([point_id(v) for v in vector_ids]))

    def count(self) -> int:
        """Number of points."""
        return int(self._shard.count(qe.CountRequest(exact=True)))

    def optimize(self) -> None:
        """Run the optimizers so that HNSW is built for the loaded points."""
        with self._write_lock:
            self._shard.optimize()

    def close(self) -> None:
        """Flush and close the shard."""
        with self._write_lock:
            self._shard.flush()
            self._shard.close()


def _record(payload: dict[str, Any]) -> VectorRecord:
    return VectorRecord(
        vector_id=str(payload.get("_id", "")),
        values=[],
        region=str(payload.get("_region", "")),
        payload=dict(payload.get("p") or {}),
        update_time=int(payload.get("_t", 0)),
    )
