"""The Qdrant Edge adapter of the ``VectorStore`` port: the edge's vector subset on disk.

Qdrant point ids must be integers or UUIDs, while our vector ids are any
string, so each point's id is a UUIDv5 of the vector id and the original id
travels in the payload. Search hits carry ids, region, payload and time but
not the embedding itself: agents rarely need it back and leaving it out keeps
the local search path short.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from edge_svc.records import ScoredRecord, VectorRecord

_NAMESPACE = uuid.UUID("6f1c1f52-5a51-4d7e-9a55-6a1f3f0e2b10")
_VECTOR_NAME = ""


def point_id(vector_id: str) -> str:
    """The Qdrant point id of a vector id."""
    return str(uuid.uuid5(_NAMESPACE, vector_id))


_HNSW_EF = 128


class QdrantEdgeStore:
    """A Qdrant Edge shard holding the vectors this edge wrote or cached."""

    def __init__(self, path: Path, dimension: int) -> None:
        self._dimension = dimension
        config = qe.EdgeConfig(vectors={_VECTOR_NAME: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)})
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
                # The default beam is narrow for tightly clustered embeddings; a wider
                # one buys recall for a fraction of a millisecond (see docs/performance.md).
                params=qe.SearchParams(hnsw_ef=max(_HNSW_EF, limit)),
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
