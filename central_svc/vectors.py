"""Central's vector graph: validation of synced vectors, searches through the ``VectorIndex`` port.

The default index is pgvector (HNSW, cosine) in central's own database; a
Qdrant server (``qdrant-client``) is the alternative. Searches are always
restricted to the caller's tenant, which comes from the credential.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

from aeterna_shared import limits
from aeterna_shared.errors import InvalidArgument
from central_svc.batches import Ack, BatchMeta, ItemFailure
from central_svc.ports import Applied, BatchLedger, Transaction, VectorIndex


@dataclass(frozen=True, slots=True)
class VectorRecord:
    """One vector to store."""

    vector_id: str
    values: list[float]
    region: str
    payload_json: str
    update_time: datetime
    claimed_tenant_id: str = ""
    problem: str = ""
    """Why the API layer could not translate the item (it then fails alone); empty when it could."""


@dataclass(frozen=True, slots=True)
class VectorHit:
    """One search result."""

    vector_id: str
    values: list[float]
    region: str
    tenant_id: str
    payload_json: str
    update_time: datetime
    score: float


@dataclass(frozen=True)
class VectorQuery:
    """A nearest-neighbour query; ``tenant_id`` always from the caller's identity."""

    tenant_id: str
    embedding: list[float]
    limit: int
    score_threshold: float
    exclude_regions: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = ()


def embedding_problem(values: list[float], dimension: int) -> str | None:
    """Why an embedding is unusable, or None."""
    if len(values) != dimension:
        return f"has {len(values)} dimensions, central is configured for {dimension}"
    if not all(math.isfinite(v) for v in values):
        return "contains NaN or infinite values"
    if not any(values):
        return "is the zero vector, which has no direction for cosine similarity"
    return None


def _vector_problem(record: VectorRecord, field: str) -> str | None:
    """Why ``aeterna_shared.limits`` refuses the vector, naming the field; None when it can be stored."""
    try:
        payload = json.loads(record.payload_json or "{}")
    except ValueError:
        return f"{field}.payload: is not JSON"
    return limits.problem_of(
        limits.validate_vector,
        vector_id=record.vector_id,
        values=record.values,
        region=record.region,
        payload=payload,
        field=field,
    )


def check_query(query: VectorQuery, dimension: int) -> None:
    """INVALID_ARGUMENT for an unusable query."""
    problem = embedding_problem(query.embedding, dimension)
    if problem is not None:
        raise InvalidArgument.for_field("embedding", problem, reason="BAD_EMBEDDING")
    if not 1 <= query.limit <= 1000:
        raise InvalidArgument.for_field("limit", "must be 1 to 1000", reason="BAD_LIMIT")


class VectorSync:
    """Applies vector batches and answers searches."""

    def __init__(self, ledger: BatchLedger, index: VectorIndex, dimension: int) -> None:
        self._ledger = ledger
        self._index = index
        self.dimension = dimension

    async def ingest(self, meta: BatchMeta, tenant_id: str, records: list[VectorRecord]) -> Ack:
        """Apply one batch; an unusable vector (or one that breaks ``aeterna_shared.limits``) fails alone."""
        failures: list[ItemFailure] = []
        good: dict[str, VectorRecord] = {}
        for index, record in enumerate(records):
            problem = embedding_problem(record.values, self.dimension) if record.vector_id else "has no vector_id"
            invalid = record.problem or (_vector_problem(record, f"vectors[{index}]") if problem is None else None)
            if invalid:
                failures.append(ItemFailure(record.vector_id, limits.ITEM_FAILURE_REASON, invalid))
            elif problem is None and record.claimed_tenant_id and record.claimed_tenant_id != tenant_id:
                failures.append(ItemFailure(record.vector_id, "TENANT_MISMATCH", "vector names another tenant"))
            elif problem is not None:
                failures.append(ItemFailure(record.vector_id, "BAD_VECTOR", f"vector {problem}"))
            else:
                held = good.get(record.vector_id)
                if held is None or held.update_time <= record.update_time:
                    good[record.vector_id] = record

        async def apply(transaction: Transaction) -> Applied:
            if good:
                await self._index.upsert(tenant_id, meta.agent_id, list(good.values()), within=transaction)
            return Applied(len(records) - len(failures), tuple(failures))

        return await self._ledger.run(meta, tenant_id, apply)

    async def search(self, query: VectorQuery) -> list[VectorHit]:
        """Validated search in the caller's tenant."""
        check_query(query, self.dimension)
        return await self._index.search(query)
