"""Qdrant server adapter of ``VectorIndex`` (``vectorDatabase.backend: qdrant``).

``qdrant-client`` is an optional extra (``pip install aeterna-hybrid[qdrant]``);
this module imports it, and the wiring imports this module only when the
backend is qdrant. It keeps the same contract as the pgvector adapter (the
contract suite, ``tests/central/test_vector_store_contract.py``, runs both):

Newer update wins, race-free
    Every upsert is a *conditional* upsert (Qdrant's ``update_filter``, server
    1.16+): a point that already exists is overwritten only if its stored
    ``update_time_us`` (microseconds since the epoch) is <= the incoming one.
    The server evaluates that filter against the stored point and writes in
    the same update operation, so two writers cannot interleave between a
    check and a write, and nothing has to be read first or retried. A point
    that does not exist yet is inserted whatever the filter. Newer-wins is
    also order-independent, so replicas applying writes in different orders
    still converge; writes go with ``WriteOrdering.MEDIUM`` so that even exact
    ties (same ``update_time``, where, as in pgvector, the later write wins)
    resolve the same way on every replica.
    Read-compare-write with a per-point version and retries was the
    alternative: it costs a read per write, needs its own version scheme, and
    is still only correct if the final write is conditional; on a server that
    has conditional writes it is strictly worse. A server older than 1.16
    would silently ignore or reject the filter, so the adapter checks the
    server version once and refuses to work (``FAILED_PRECONDITION``) instead
    of letting an older write overwrite a newer one.
    Points written by the previous adapter carry only the ISO ``update_time``;
    for those the filter compares that field instead, so they obey the same
    rule and are upgraded by their next accepted write.

Tenant isolation
    Point ids must be UUIDs or integers, so a vector's point id is a UUIDv5 of
    (tenant, vector id): the same vector id in two tenants is two points. The
    update filter also requires the stored point's tenant and vector id to be
    the incoming ones, and every search filters on the caller's tenant.

Searches
    Filtered in Qdrant (tenant must match; excluded regions and ids must not),
    so a filter never starves the limit; hits below ``score_threshold`` (0 is a
    threshold too) are dropped; best first. Qdrant normalises vectors stored
    for cosine distance, so the original norm travels in the payload and hits
    carry the embedding as written.

Errors
    Bad input (wrong dimension, NaN, infinity, the zero vector) is refused with
    ``InvalidArgument`` before anything is sent, for the whole call. The
    client's errors are translated in one table (``translated_errors``): transport
    failures, timeouts, throttling and server errors become ``Unavailable``
    (``VECTOR_STORE_UNAVAILABLE``, retryable), a request the server rejects as
    malformed becomes ``InvalidArgument``. The adapter talks REST (the
    client's default); nothing of ``qdrant_client`` leaks past it.

``within`` (the ledger's PostgreSQL transaction) cannot be joined: the Qdrant
write happens inside the ledger's apply step, and if that transaction rolls
back the batch is re-sent and re-applied, which newer-wins makes harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import QdrantException, ResourceExhaustedResponse
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from aeterna_shared.errors import FailedPrecondition, InvalidArgument, Unavailable
from central_svc.ports import Transaction
from central_svc.vectors import VectorHit, VectorQuery, VectorRecord, embedding_problem

__all__ = [
    "MIN_SERVER_VERSION",
    "QdrantVectorIndex",
    "point_id",
    "server_supports_conditional_upsert",
    "translated_errors",
]

_NAMESPACE = uuid.UUID("6f1c2a7e-3d0b-4c55-9a1e-8f2b7c9d0e11")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCAL = ":memory:"
_LOCAL_PATH_PREFIX = "path:"
_SCORE_SLACK = 1e-6
_CHUNK = 256
"""Conditional upserts sent in one request (each row needs its own filter, so one operation per row)."""

MIN_SERVER_VERSION = (1, 16)
"""The first Qdrant server with conditional upserts (``update_filter``)."""


def point_id(tenant_id: str, vector_id: str) -> str:
    """Qdrant point id of a tenant's vector."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant_id}\x00{vector_id}"))


def server_supports_conditional_upsert(version: str) -> bool:
    """Whether a Qdrant server of ``version`` ("1.16.0", "1.17.0-dev") applies ``update_filter``."""
    match = re.match(r"\s*v?(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) >= MIN_SERVER_VERSION


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch (a naive datetime is taken as UTC, as the API layer always sends UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _unavailable(what: str, *, retry_after: float = 1.0) -> Unavailable:
    return Unavailable(
        f"central's vector store (Qdrant) {what}; retry later",
        reason="VECTOR_STORE_UNAVAILABLE",
        retry_after=retry_after,
    )


def _server_message(error: UnexpectedResponse) -> str:
    with contextlib.suppress(Exception):
        message = error.structured()["status"]["error"]
        if isinstance(message, str):
            return message[:300]
    return error.reason_phrase or f"HTTP {error.status_code}"


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """``qdrant_client`` errors to domain errors, in one place (first matching row wins)."""
    try:
        yield
    except ResourceExhaustedResponse as error:
        raise _unavailable("is throttling central", retry_after=float(error.retry_after_s)) from error
    except UnexpectedResponse as error:
        if error.status_code in (400, 422):
            raise InvalidArgument(
                f"the vector store refused the request: {_server_message(error)}", reason="VECTOR_REJECTED"
            ) from None
        raise _unavailable(f"answered HTTP {error.status_code}") from error
    except (ApiException, QdrantException, httpx.HTTPError, OSError) as error:
        # ResponseHandlingException (connection refused, timeout, unreadable answer) is an ApiException.
        raise _unavailable("is unreachable") from error


def _bad_embedding(field: str, values: Sequence[float], dimension: int) -> InvalidArgument | None:
    problem = embedding_problem(list(values), dimension)
    if problem is None:
        return None
    return InvalidArgument.for_field(field, problem, reason="BAD_EMBEDDING")


class QdrantVectorIndex:
    """Vectors in a Qdrant server collection (cosine distance).

    ``url`` is the server (``http(s)://host:6333``). For tests and laptops,
    ``":memory:"`` or ``"path:/some/dir"`` runs qdrant-client's local mode in
    process, and ``client`` injects a ready client (``url`` is then unused).
    """

    def __init__(
        self,
        url: str,
        collection: str,
        dimension: int,
        *,
        client: AsyncQdrantClient | None = None,
        timeout: int | None = None,
    ) -> None:
        if "update_filter" not in models.PointsList.model_fields:
            raise FailedPrecondition(
                "the installed qdrant-client cannot make upserts conditional; central needs qdrant-client >= 1.16",
                reason="VECTOR_STORE_TOO_OLD",
            )
        if client is None:
            if url == _LOCAL:
                client = AsyncQdrantClient(location=_LOCAL)
            elif url.startswith(_LOCAL_PATH_PREFIX):
                client = AsyncQdrantClient(path=url.removeprefix(_LOCAL_PATH_PREFIX))
            else:
                # The first call checks the server version itself (conditional upserts need 1.16); the
                # client's own check would block a thread on an HTTP call at construction and only warn.
                client = AsyncQdrantClient(url=url, timeout=timeout, check_compatibility=False)
        self._client = client
        self._collection = collection
        self._dimension = dimension
        self._ready = False
        self._preparing = asyncio.Lock()

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    async def _ensure_collection(self) -> None:
        if self._ready:
            return
        async with self._preparing:
            if not self._ready:
                await self._prepare()
                self._ready = True

    async def _prepare(self) -> None:
        """Check the server can keep the contract, then find or create the collection."""
        with translated_errors():
            info = await self._client.info()
            if not server_supports_conditional_upsert(info.version):
                raise FailedPrecondition(
                    f"Qdrant {info.version} cannot make upserts conditional, so an older vector could overwrite"
                    f" a newer one; central needs Qdrant >= {'.'.join(map(str, MIN_SERVER_VERSION))}",
                    reason="VECTOR_STORE_TOO_OLD",
                )
            if await self._client.collection_exists(self._collection):
                await self._check_collection()
            else:
                await self._create_collection()

    async def _check_collection(self) -> None:
        params = (await self._client.get_collection(self._collection)).config.params.vectors
        size = params.size if isinstance(params, models.VectorParams) else None
        if size != self._dimension:
            raise FailedPrecondition(
                f"Qdrant collection {self._collection!r} holds vectors of {size} dimensions, central is configured"
                f" for {self._dimension} (vectorDatabase.dimension)",
                reason="VECTOR_STORE_MISCONFIGURED",
            )

    async def _create_collection(self) -> None:
        try:
            await self._client.create_collection(
                self._collection,
                vectors_config=models.VectorParams(size=self._dimension, distance=models.Distance.COSINE),
            )
        except UnexpectedResponse as error:
            if error.status_code != 409:  # 409: another central replica created it first
                raise
        await self._check_collection()
        indexes: list[tuple[str, models.PayloadSchemaType | models.KeywordIndexParams]] = [
            # is_tenant co-locates each tenant's points on disk: every search filters on it.
            ("tenant_id", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
            ("region", models.PayloadSchemaType.KEYWORD),
            ("vector_id", models.PayloadSchemaType.KEYWORD),
        ]
        with warnings.catch_warnings():
            # Local mode (tests) warns that payload indexes do nothing there; the server uses them.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
            for field, schema in indexes:
                await self._client.create_payload_index(self._collection, field, schema)

    def _point(self, tenant_id: str, agent_id: str, row: VectorRecord) -> models.PointStruct:
        return models.PointStruct(
            id=point_id(tenant_id, row.vector_id),
            vector=list(row.values),
            payload={
                "tenant_id": tenant_id,
                "vector_id": row.vector_id,
                "region": row.region,
                "agent_id": agent_id,
                "update_time": row.update_time.isoformat(),
                "update_time_us": _micros(row.update_time),
                "norm": math.hypot(*row.values),
                "payload": json.loads(row.payload_json or "{}"),
            },
        )

    @staticmethod
    def _overwrites(tenant_id: str, row: VectorRecord) -> models.Filter:
        """What a stored point must match for ``row`` to replace it: same tenant and id, not newer."""
        moment = row.update_time if row.update_time.tzinfo else row.update_time.replace(tzinfo=UTC)
        return models.Filter(
            must=[
                models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant_id)),
                models.FieldCondition(key="vector_id", match=models.MatchValue(value=row.vector_id)),
            ],
            should=[
                models.FieldCondition(key="update_time_us", range=models.Range(lte=_micros(row.update_time))),
                # Written before update_time_us existed: compare the ISO time it does carry.
                models.Filter(
                    must=[
                        models.IsEmptyCondition(is_empty=models.PayloadField(key="update_time_us")),
                        models.FieldCondition(key="update_time", range=models.DatetimeRange(lte=moment)),
                    ]
                ),
            ],
        )

    async def upsert(
        self, tenant_id: str, agent_id: str, rows: list[VectorRecord], *, within: Transaction | None = None
    ) -> None:
        """Conditional upserts (newer update_time wins); ``within`` cannot be joined (see the module docstring)."""
        newest: dict[str, VectorRecord] = {}
        for row in rows:
            refused = _bad_embedding(f"vectors[{row.vector_id}].values", row.values, self._dimension)
            if refused is not None:
                raise refused
            try:
                json.loads(row.payload_json or "{}")
            except ValueError:
                raise InvalidArgument.for_field(
                    f"vectors[{row.vector_id}].payload", "is not JSON", reason="BAD_PAYLOAD"
                ) from None
            held = newest.get(row.vector_id)
            if held is None or held.update_time <= row.update_time:
                newest[row.vector_id] = row
        if not newest:
            return
        await self._ensure_collection()
        operations = [
            models.UpsertOperation(
                upsert=models.PointsList(
                    points=[self._point(tenant_id, agent_id, row)], update_filter=self._overwrites(tenant_id, row)
                )
            )
            for row in newest.values()
        ]
        for start in range(0, len(operations), _CHUNK):
            with translated_errors():
                await self._client.batch_update_points(
                    self._collection,
                    operations[start : start + _CHUNK],
                    wait=True,
                    ordering=models.WriteOrdering.MEDIUM,
                )

    async def search(self, query: VectorQuery) -> list[VectorHit]:
        """Filtered search in the tenant: best first, at most ``limit``, each with score >= ``score_threshold``."""
        refused = _bad_embedding("embedding", query.embedding, self._dimension)
        if refused is not None:
            raise refused
        if query.limit < 1:
            raise InvalidArgument.for_field("limit", "must be at least 1", reason="BAD_LIMIT")
        await self._ensure_collection()
        must_not: list[models.Condition] = []
        if query.exclude_regions:
            must_not.append(models.FieldCondition(key="region", match=models.MatchAny(any=list(query.exclude_regions))))
        if query.exclude_ids:
            must_not.append(models.FieldCondition(key="vector_id", match=models.MatchAny(any=list(query.exclude_ids))))
        with translated_errors():
            result = await self._client.query_points(
                self._collection,
                query=list(query.embedding),
                limit=query.limit,
                # Slack for float32 rounding (a cosine of -1 comes back as -1.00000002); exact filter below.
                score_threshold=query.score_threshold - _SCORE_SLACK,
                with_vectors=True,
                with_payload=True,
                query_filter=models.Filter(
                    must=[models.FieldCondition(key="tenant_id", match=models.MatchValue(value=query.tenant_id))],
                    must_not=must_not,
                ),
            )
        hits = [_hit(point) for point in result.points]
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return [hit for hit in hits if hit.score >= query.score_threshold]


def _hit(point: models.ScoredPoint) -> VectorHit:
    payload: dict[str, Any] = point.payload or {}
    vector = point.vector
    if not isinstance(vector, list):
        raise _unavailable("returned a point without its vector")
    norm = payload.get("norm")
    scale = float(norm) if isinstance(norm, int | float) else 1.0  # points from the previous adapter: unit length
    return VectorHit(
        vector_id=str(payload["vector_id"]),
        values=[float(x) * scale for x in vector if isinstance(x, int | float)],
        region=str(payload.get("region", "")),
        tenant_id=str(payload["tenant_id"]),
        payload_json=json.dumps(payload.get("payload", {})),
        update_time=datetime.fromisoformat(str(payload["update_time"])),
        # A cosine similarity is within [-1, 1]; float32 rounding can step just outside (pgvector clamps too).
        score=min(1.0, max(-1.0, float(point.score))),
    )
