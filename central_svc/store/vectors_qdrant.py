"""Qdrant server adapter of ``VectorIndex`` (``vectorDatabase.backend: qdrant``).

``qdrant-client`` is an optional extra (``pip install aeterna-hybrid[qdrant]``),
imported only when this adapter is built. Point ids must be UUIDs or integers
in Qdrant, so each vector's point id is a UUIDv5 of (tenant, vector id), and the
original ids travel in the payload.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from central_svc.store.ledger import Connection
from central_svc.vectors import VectorHit, VectorQuery, VectorRecord

_NAMESPACE = uuid.UUID("6f1c2a7e-3d0b-4c55-9a1e-8f2b7c9d0e11")


def point_id(tenant_id: str, vector_id: str) -> str:
    """Qdrant point id of a tenant's vector."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant_id}\x00{vector_id}"))


class QdrantVectorIndex:
    """Vectors in a Qdrant server collection (cosine distance)."""

    def __init__(self, url: str, collection: str, dimension: int) -> None:
        from qdrant_client import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - optional extra
            AsyncQdrantClient,
        )

        self._client: Any = AsyncQdrantClient(url=url)
        self._collection = collection
        self._dimension = dimension
        self._ready = False

    async def _ensure_collection(self) -> None:
        if self._ready:
            return
        from qdrant_client import models  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        if not await self._client.collection_exists(self._collection):
            await self._client.create_collection(
                self._collection,
                vectors_config=models.VectorParams(size=self._dimension, distance=models.Distance.COSINE),
            )
            for field in ("tenant_id", "region", "vector_id"):
                await self._client.create_payload_index(self._collection, field, models.PayloadSchemaType.KEYWORD)
        self._ready = True

    async def upsert(
        self, tenant_id: str, agent_id: str, rows: list[VectorRecord], *, within: Connection | None = None
    ) -> None:
        """Upsert points; ``within`` is ignored (Qdrant cannot join PostgreSQL transactions; upserts are idempotent)."""
        from qdrant_client import models  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        await self._ensure_collection()
        points = [
            models.PointStruct(
                id=point_id(tenant_id, row.vector_id),
                vector=row.values,
                payload={
                    "tenant_id": tenant_id,
                    "vector_id": row.vector_id,
                    "region": row.region,
                    "agent_id": agent_id,
                    "update_time": row.update_time.isoformat(),
                    "payload": json.loads(row.payload_json or "{}"),
                },
            )
            for row in rows
        ]
        await self._client.upsert(self._collection, points=points, wait=True)

    async def search(self, query: VectorQuery) -> list[VectorHit]:
        """Filtered search in the tenant."""
        from qdrant_client import models  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        await self._ensure_collection()
        must_not: list[Any] = []
        if query.exclude_regions:
            must_not.append(models.FieldCondition(key="region", match=models.MatchAny(any=list(query.exclude_regions))))
        if query.exclude_ids:
            must_not.append(models.FieldCondition(key="vector_id", match=models.MatchAny(any=list(query.exclude_ids))))
        result = await self._client.query_points(
            self._collection,
            query=query.embedding,
            limit=query.limit,
            score_threshold=query.score_threshold or None,
            with_vectors=True,
            query_filter=models.Filter(
                must=[models.FieldCondition(key="tenant_id", match=models.MatchValue(value=query.tenant_id))],
                must_not=must_not,
            ),
        )
        return [
            VectorHit(
                vector_id=point.payload["vector_id"],
                values=list(point.vector),
                region=point.payload["region"],
                tenant_id=point.payload["tenant_id"],
                payload_json=json.dumps(point.payload.get("payload", {})),
                update_time=datetime.fromisoformat(point.payload["update_time"]),
                score=float(point.score),
            )
            for point in result.points
        ]
