"""One contract for central's ``VectorIndex`` port, run against both backends.

``pgvector`` runs on the real PostgreSQL the central tests share (a fresh
migrated database per test). ``qdrant`` runs through ``qdrant-client``'s local
mode: the same client API and the same filter/conditional-upsert semantics, in
process (no Qdrant server binary can be had here). Every test looks only at what
a caller of the port sees: the hits ``search`` returns and the errors raised.

The port has no delete, so there is nothing to test for deletes.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from aeterna_shared.errors import AeternaError, FailedPrecondition, InvalidArgument, Unavailable
from central_svc.ports import VectorIndex
from central_svc.store.database import Database
from central_svc.store.vectors_pgvector import PgVectorIndex
from central_svc.store.vectors_qdrant import (
    QdrantVectorIndex,
    point_id,
    server_supports_conditional_upsert,
    translated_errors,
)
from central_svc.vectors import VectorHit, VectorQuery, VectorRecord
from tests.support.postgres import TEST_VECTOR_DIMENSION

DIM = TEST_VECTOR_DIMENSION
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
AGENT = "edge-a"


def vec(*head: float) -> list[float]:
    """An embedding of the test dimension: ``head`` followed by zeros."""
    return [*head] + [0.0] * (DIM - len(head))


def record(
    vector_id: str,
    values: list[float],
    *,
    at: datetime = T0,
    region: str = "us-west-2",
    payload: dict[str, Any] | None = None,
) -> VectorRecord:
    return VectorRecord(
        vector_id=vector_id,
        values=values,
        region=region,
        payload_json=json.dumps(payload if payload is not None else {}),
        update_time=at,
    )


def query(tenant: str, embedding: list[float], **kw: Any) -> VectorQuery:
    kw.setdefault("limit", 100)
    kw.setdefault("score_threshold", -1.0)
    return VectorQuery(tenant_id=tenant, embedding=embedding, **kw)


async def everything(index: VectorIndex, tenant: str, probe: list[float] | None = None) -> dict[str, VectorHit]:
    """Every vector of a tenant as the port shows it (score threshold -1 lets any cosine through)."""
    hits = await index.search(query(tenant, probe or vec(1.0), limit=1000))
    assert len({hit.vector_id for hit in hits}) == len(hits), "a vector id appears twice in one tenant"
    return {hit.vector_id: hit for hit in hits}


async def only(index: VectorIndex, tenant: str, vector_id: str) -> VectorHit:
    hits = await everything(index, tenant)
    assert vector_id in hits, f"{vector_id} is not visible in tenant {tenant}"
    return hits[vector_id]


def payload_of(hit: VectorHit) -> Any:
    return json.loads(hit.payload_json)


@pytest.fixture(params=["pgvector", "qdrant"])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[VectorIndex]:
    """The port, on each backend in turn (fresh and empty for every test)."""
    if request.param == "pgvector":
        database = Database(request.getfixturevalue("database_url"), max_size=8)
        await database.open()
        try:
            yield PgVectorIndex(database)
        finally:
            await database.close()
    else:
        qdrant = QdrantVectorIndex(":memory:", "contract", DIM)
        try:
            yield qdrant
        finally:
            await qdrant.close()


# -- newer update wins -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["older-then-newer", "newer-then-older"])
async def test_newer_update_wins_whatever_the_arrival_order(index: VectorIndex, order: str) -> None:
    older = record("v1", vec(1.0, 2.0), at=T0, region="eu-west-1", payload={"text": "old"})
    newer = record("v1", vec(2.0, 1.0), at=T0 + timedelta(seconds=1), region="us-east-1", payload={"text": "new"})
    first, second = (older, newer) if order == "older-then-newer" else (newer, older)
    await index.upsert("t1", AGENT, [first])
    await index.upsert("t1", AGENT, [second])

    hit = await only(index, "t1", "v1")
    assert payload_of(hit) == {"text": "new"}
    assert hit.values == pytest.approx(vec(2.0, 1.0), rel=1e-5)
    assert hit.region == "us-east-1"
    assert hit.update_time == newer.update_time
    assert len(await everything(index, "t1")) == 1


async def test_an_older_write_one_microsecond_behind_changes_nothing(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record("v1", vec(1.0), at=T0, payload={"n": 2})])
    await index.upsert("t1", AGENT, [record("v1", vec(0.0, 1.0), at=T0 - timedelta(microseconds=1), payload={"n": 1})])

    hit = await only(index, "t1", "v1")
    assert payload_of(hit) == {"n": 2}
    assert hit.update_time == T0


async def test_at_the_same_update_time_the_later_write_wins(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record("v1", vec(1.0), payload={"v": "first"})])
    await index.upsert("t1", AGENT, [record("v1", vec(1.0), payload={"v": "second"})])

    assert payload_of(await only(index, "t1", "v1")) == {"v": "second"}


async def test_replaying_the_same_row_is_a_no_op(index: VectorIndex) -> None:
    row = record("v1", vec(1.0, 1.0), payload={"text": "same"})
    await index.upsert("t1", AGENT, [row])
    await index.upsert("t1", AGENT, [row])
    await index.upsert("t1", AGENT, [])

    hits = await everything(index, "t1")
    assert list(hits) == ["v1"]
    assert payload_of(hits["v1"]) == {"text": "same"}
    assert hits["v1"].update_time == T0


async def test_each_row_of_one_call_is_judged_on_its_own(index: VectorIndex) -> None:
    later = T0 + timedelta(minutes=1)
    await index.upsert(
        "t1", AGENT, [record("a", vec(1.0), at=later, payload={"v": "a2"}), record("b", vec(1.0), payload={"v": "b1"})]
    )
    await index.upsert(
        "t1",
        AGENT,
        [
            record("a", vec(1.0), at=T0, payload={"v": "a1"}),  # older than stored: ignored
            record("b", vec(1.0), at=later, payload={"v": "b2"}),  # newer: applied
            record("c", vec(1.0), at=T0, payload={"v": "c1"}),  # new: inserted
        ],
    )

    hits = await everything(index, "t1")
    assert {vid: payload_of(hit)["v"] for vid, hit in hits.items()} == {"a": "a2", "b": "b2", "c": "c1"}


async def test_the_same_vector_twice_in_one_call_keeps_the_newer(index: VectorIndex) -> None:
    await index.upsert(
        "t1",
        AGENT,
        [
            record("v1", vec(1.0), at=T0, payload={"v": 1}),
            record("v1", vec(1.0), at=T0 + timedelta(seconds=3), payload={"v": 3}),
            record("v1", vec(1.0), at=T0 + timedelta(seconds=2), payload={"v": 2}),
        ],
    )

    hit = await only(index, "t1", "v1")
    assert payload_of(hit) == {"v": 3}
    assert hit.update_time == T0 + timedelta(seconds=3)


async def test_concurrent_writers_of_one_vector_leave_the_newest(index: VectorIndex) -> None:
    versions = [record("v1", vec(1.0, float(n)), at=T0 + timedelta(seconds=n), payload={"n": n}) for n in range(24)]
    random.Random(12).shuffle(versions)  # the newest neither first nor last to arrive
    assert versions[0].payload_json != '{"n": 23}'
    assert versions[-1].payload_json != '{"n": 23}'

    await asyncio.gather(*(index.upsert("t1", f"edge-{n}", [row]) for n, row in enumerate(versions)))

    hit = await only(index, "t1", "v1")
    assert payload_of(hit) == {"n": 23}
    assert hit.update_time == T0 + timedelta(seconds=23)
    assert hit.values == pytest.approx(vec(1.0, 23.0), rel=1e-5)


# -- tenants ------------------------------------------------------------------------------------------------------


async def test_tenants_with_the_same_vector_id_never_overwrite_each_other(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record("shared", vec(1.0), at=T0 + timedelta(hours=1), payload={"owner": "t1"})])
    # Older than t1's copy: must still be stored for t2 (it is t2's first write), and must not touch t1's.
    await index.upsert("t2", AGENT, [record("shared", vec(0.0, 1.0), at=T0, payload={"owner": "t2"})])
    # Newer than t1's copy: replaces t2's only.
    await index.upsert(
        "t2", AGENT, [record("shared", vec(0.0, 1.0), at=T0 + timedelta(hours=2), payload={"owner": "t2-new"})]
    )

    mine, theirs = await only(index, "t1", "shared"), await only(index, "t2", "shared")
    assert (mine.tenant_id, payload_of(mine), mine.update_time) == ("t1", {"owner": "t1"}, T0 + timedelta(hours=1))
    assert (theirs.tenant_id, payload_of(theirs)) == ("t2", {"owner": "t2-new"})
    assert mine.values == pytest.approx(vec(1.0), rel=1e-5)


async def test_search_sees_only_the_callers_tenant(index: VectorIndex) -> None:
    # Another tenant's vectors are the closest to the query; they must neither appear nor crowd out our own.
    await index.upsert("other", AGENT, [record(f"o{n}", vec(1.0, 0.01 * n)) for n in range(10)])
    await index.upsert("mine", AGENT, [record("m1", vec(1.0, 1.0)), record("m2", vec(1.0, 2.0))])

    hits = await index.search(query("mine", vec(1.0), limit=2))
    assert [(hit.vector_id, hit.tenant_id) for hit in hits] == [("m1", "mine"), ("m2", "mine")]
    assert await index.search(query("nobody", vec(1.0))) == []


# -- search filters, threshold, limit ------------------------------------------------------------------------------

# cosine with vec(1.0): same 1.0, near 0.894, diag 0.707, neg -0.243, opposite -1.0
SCORED = {
    "same": vec(1.0),
    "near": vec(2.0, 1.0),
    "diag": vec(1.0, 1.0),
    "neg": vec(-1.0, 4.0),
    "opposite": vec(-1.0),
}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_hits_are_best_first_with_cosine_scores(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record(vid, values) for vid, values in SCORED.items()])

    hits = await index.search(query("t1", vec(1.0), limit=10, score_threshold=-1.0))
    assert [hit.vector_id for hit in hits] == ["same", "near", "diag", "neg", "opposite"]
    for hit in hits:
        assert hit.score == pytest.approx(cosine(SCORED[hit.vector_id], vec(1.0)), abs=1e-5)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.8, ["same", "near"]),
        (0.0, ["same", "near", "diag"]),  # zero is a threshold too: negative similarities are dropped
        (-0.5, ["same", "near", "diag", "neg"]),
        (1.5, []),
    ],
)
async def test_score_threshold_drops_weaker_hits(index: VectorIndex, threshold: float, expected: list[str]) -> None:
    await index.upsert("t1", AGENT, [record(vid, values) for vid, values in SCORED.items()])

    hits = await index.search(query("t1", vec(1.0), limit=10, score_threshold=threshold))
    assert [hit.vector_id for hit in hits] == expected
    assert all(hit.score >= threshold for hit in hits)


async def test_limit_keeps_the_best(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record(vid, values) for vid, values in SCORED.items()])

    assert [hit.vector_id for hit in await index.search(query("t1", vec(1.0), limit=2))] == ["same", "near"]
    assert [hit.vector_id for hit in await index.search(query("t1", vec(1.0), limit=1))] == ["same"]


async def test_excluded_regions_are_left_out_without_starving_the_result(index: VectorIndex) -> None:
    # The excluded regions hold the closest vectors; the filter must still fill the limit from the others.
    close = [record(f"eu{n}", vec(1.0, 0.01 * n), region="eu-west-1") for n in range(20)]
    close += [record(f"ap{n}", vec(1.0, 0.01 * n + 0.005), region="ap-south-1") for n in range(20)]
    far = [record(f"us{n}", vec(1.0, 1.0 + n), region="us-west-2") for n in range(4)]
    await index.upsert("t1", AGENT, close + far)

    hits = await index.search(query("t1", vec(1.0), limit=3, exclude_regions=("eu-west-1", "ap-south-1")))
    assert [(hit.vector_id, hit.region) for hit in hits] == [
        ("us0", "us-west-2"),
        ("us1", "us-west-2"),
        ("us2", "us-west-2"),
    ]

    only_eu_out = await index.search(query("t1", vec(1.0), limit=100, exclude_regions=("eu-west-1",)))
    assert {hit.region for hit in only_eu_out} == {"ap-south-1", "us-west-2"}
    assert len(only_eu_out) == 24


async def test_excluded_ids_are_left_out(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record(vid, values) for vid, values in SCORED.items()])

    hits = await index.search(query("t1", vec(1.0), limit=2, exclude_ids=("same", "near", "not-there")))
    assert [hit.vector_id for hit in hits] == ["diag", "neg"]


# -- round trip ---------------------------------------------------------------------------------------------------


async def test_what_was_written_is_what_search_returns(index: VectorIndex) -> None:
    payload = {"text": "héllo ✓", "tags": ["a", "b"], "n": 1.5, "nested": {"none": None, "flag": True, "k": [1, 2]}}
    values = vec(0.5, -2.0, 0.25, 3.0, 1.0, 0.0, -0.125, 8.0)
    await index.upsert(
        "t1",
        AGENT,
        [
            record("full", values, region="ap-south-1", payload=payload),
            VectorRecord("empty", vec(0.0, 0.0, 1.0), "", "", T0),  # no payload at all
        ],
    )

    hits = await everything(index, "t1", probe=values)
    full, empty = hits["full"], hits["empty"]
    assert (full.vector_id, full.tenant_id, full.region, full.update_time) == ("full", "t1", "ap-south-1", T0)
    assert full.values == pytest.approx(values, rel=1e-5)  # the embedding as written, not a normalised copy
    assert payload_of(full) == payload
    assert full.score == pytest.approx(1.0, abs=1e-5)
    assert full.update_time.utcoffset() is not None
    assert (empty.region, payload_of(empty)) == ("", {})
    assert empty.values == pytest.approx(vec(0.0, 0.0, 1.0), rel=1e-5)


# -- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [(vec(1.0)[:3], "dimensions"), ([*vec(1.0), 1.0], "dimensions"), (vec(1.0, math.nan), "nan")],
    ids=["too-short", "too-long", "nan"],
)
async def test_a_bad_embedding_is_refused_and_nothing_changes(index: VectorIndex, bad: list[float], words: str) -> None:
    await index.upsert("t1", AGENT, [record("kept", vec(1.0), payload={"v": 1})])

    with pytest.raises(InvalidArgument) as refused:
        await index.upsert(
            "t1",
            AGENT,
            [record("kept", vec(1.0), at=T0 + timedelta(seconds=1), payload={"v": 2}), record("bad", bad)],
        )
    assert words in refused.value.message.lower()

    hits = await everything(index, "t1")
    assert list(hits) == ["kept"]
    assert payload_of(hits["kept"]) == {"v": 1}


async def test_a_query_of_the_wrong_dimension_is_refused(index: VectorIndex) -> None:
    await index.upsert("t1", AGENT, [record("v1", vec(1.0))])

    with pytest.raises(InvalidArgument) as refused:
        await index.search(query("t1", [1.0, 0.0, 0.0]))
    assert "dimensions" in refused.value.message.lower()


# -- Qdrant only: what the contract needs from a real deployment -----------------------------------------------------


def test_conditional_upserts_need_qdrant_1_16() -> None:
    assert server_supports_conditional_upsert("1.16.0")
    assert server_supports_conditional_upsert("1.20.3")
    assert server_supports_conditional_upsert("2.0.0")
    assert server_supports_conditional_upsert("1.17.0-dev")
    assert not server_supports_conditional_upsert("1.15.5")
    assert not server_supports_conditional_upsert("0.11.0")
    assert not server_supports_conditional_upsert("garbage")


def _http_error(status: int, message: str) -> UnexpectedResponse:
    body = json.dumps({"status": {"error": message}}).encode()
    return UnexpectedResponse(status, "", body, httpx.Headers())


@pytest.mark.parametrize(
    ("raised", "kind", "reason"),
    [
        (_http_error(400, "Wrong input: Vector dimension error"), InvalidArgument, "VECTOR_REJECTED"),
        (_http_error(422, "bad filter"), InvalidArgument, "VECTOR_REJECTED"),
        (_http_error(503, "overloaded"), Unavailable, "VECTOR_STORE_UNAVAILABLE"),
        (_http_error(500, "panic"), Unavailable, "VECTOR_STORE_UNAVAILABLE"),
        (ResponseHandlingException(httpx.ConnectError("refused")), Unavailable, "VECTOR_STORE_UNAVAILABLE"),
        (ResourceExhaustedResponse("slow down", 7), Unavailable, "VECTOR_STORE_UNAVAILABLE"),
    ],
    ids=["400", "422", "503", "500", "transport", "429"],
)
def test_qdrant_client_errors_become_domain_errors(raised: Exception, kind: type[AeternaError], reason: str) -> None:
    """The mapping table alone (a server that answers 400 or 429 on cue is not available here)."""
    with pytest.raises(kind) as mapped, translated_errors():
        raise raised
    assert mapped.value.reason == reason
    if isinstance(mapped.value, Unavailable) and isinstance(raised, ResourceExhaustedResponse):
        assert mapped.value.retry_after == 7
    if isinstance(raised, UnexpectedResponse) and kind is InvalidArgument:
        assert raised.structured()["status"]["error"] in mapped.value.message  # the server's reason reaches the caller


async def test_qdrant_unreachable_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = QdrantVectorIndex(f"http://127.0.0.1:{port}", "contract", DIM, timeout=5)
    try:
        with pytest.raises(Unavailable) as upsert_error:
            await index.upsert("t1", AGENT, [record("v1", vec(1.0))])
        with pytest.raises(Unavailable):
            await index.search(query("t1", vec(1.0)))
    finally:
        await index.close()
    assert upsert_error.value.reason == "VECTOR_STORE_UNAVAILABLE"


async def test_qdrant_on_disk_keeps_vectors_and_their_versions_across_a_restart(tmp_path: Path) -> None:
    url = f"path:{tmp_path / 'qdrant'}"
    first = QdrantVectorIndex(url, "contract", DIM)
    try:
        await first.upsert("t1", AGENT, [record("v1", vec(1.0), at=T0 + timedelta(seconds=1), payload={"v": "new"})])
    finally:
        await first.close()

    again = QdrantVectorIndex(url, "contract", DIM)
    try:
        await again.upsert("t1", AGENT, [record("v1", vec(1.0), at=T0, payload={"v": "old"})])
        hit = await only(again, "t1", "v1")
        assert (payload_of(hit), hit.update_time) == ({"v": "new"}, T0 + timedelta(seconds=1))
    finally:
        await again.close()


async def test_qdrant_collection_of_another_dimension_is_a_failed_precondition() -> None:
    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection(
        "contract", vectors_config=models.VectorParams(size=DIM * 2, distance=models.Distance.COSINE)
    )
    index = QdrantVectorIndex(":memory:", "contract", DIM, client=client)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await index.upsert("t1", AGENT, [record("v1", vec(1.0))])
        assert str(DIM * 2) in refused.value.message
    finally:
        await index.close()


async def test_qdrant_points_written_before_versioning_still_obey_newer_wins() -> None:
    """A point stored by the previous adapter (ISO ``update_time`` only) is compared on that time."""
    client = AsyncQdrantClient(location=":memory:")
    index = QdrantVectorIndex(":memory:", "contract", DIM, client=client)
    try:
        await index.upsert("t1", AGENT, [record("other", vec(0.0, 1.0))])  # creates the collection
        legacy = {
            "tenant_id": "t1",
            "vector_id": "old",
            "region": "us-west-2",
            "agent_id": AGENT,
            "update_time": T0.isoformat(),
            "payload": {"v": "legacy"},
        }
        await client.upsert(
            "contract", points=[models.PointStruct(id=point_id("t1", "old"), vector=vec(1.0), payload=legacy)]
        )
        assert payload_of(await only(index, "t1", "old")) == {"v": "legacy"}

        await index.upsert("t1", AGENT, [record("old", vec(1.0), at=T0 - timedelta(seconds=1), payload={"v": "older"})])
        assert payload_of(await only(index, "t1", "old")) == {"v": "legacy"}

        await index.upsert("t1", AGENT, [record("old", vec(1.0), at=T0 + timedelta(seconds=1), payload={"v": "newer"})])
        hit = await only(index, "t1", "old")
        assert (payload_of(hit), hit.update_time) == ({"v": "newer"}, T0 + timedelta(seconds=1))
    finally:
        await index.close()
