"""The admission step (``central_svc.admission.admit``), the ack's ledger encoding and AIP-158 paging.

``admit`` is the one path every sync RPC runs a batch through; these tests call
it directly with the rules central serves with, so each refusal's status,
reason and order is pinned down without a server. The servers in
``tests/central`` and ``tests/fault/test_abuse.py`` run the same code over gRPC.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_security.identity import Identity
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import AeternaError, InvalidArgument, PermissionDenied, Unauthenticated
from aeterna_shared.wire.canonical import sign_batch
from central_svc import page_tokens
from central_svc.admission import AdmissionRules, admit, content_digest
from central_svc.batches import Ack, AckStatus, BatchMeta, Channel, DecisionResult, ItemFailure

KEY = b"edge-a-signing-key"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EDGE_A = Identity(agent_id="edge-a", tenant_id="tenant-a", scopes=frozenset({"sync"}))


def rules(**overrides: Any) -> AdmissionRules:
    """Central's rules from the default config: only edge-a has a key, the clock stands at ``NOW``."""
    keys = {"edge-a": KEY}
    base = AdmissionRules.from_config(AeternaConfig().sync, keys.get, lambda: NOW)
    return AdmissionRules(**{**base.__dict__, **overrides})


def batch(
    agent_id: str = "edge-a",
    *,
    sessions: int = 1,
    sent: datetime | None = NOW,
    key: bytes = KEY,
    **header: Any,
) -> sync_pb2.SyncSessionsRequest:
    """A session batch signed as the edge signs it; ``header`` overrides header fields."""
    fields: dict[str, Any] = {"batch_id": str(uuid.uuid4()), "sequence": 1, "agent_id": agent_id, "region": "eu"}
    request = sync_pb2.SyncSessionsRequest(
        header=sync_pb2.BatchHeader(**{**fields, **header}),
        sessions=[memory_pb2.Session(session_id=f"s-{i}", user_id="u") for i in range(sessions)],
    )
    if sent is not None:
        request.header.sent_time.FromDatetime(sent)
    sign_batch(request, key)
    return request


def refusal(request: sync_pb2.SyncSessionsRequest, identity: Identity = EDGE_A, **overrides: Any) -> AeternaError:
    """The error ``admit`` raises for ``request``."""
    with pytest.raises(AeternaError) as caught:
        admit(request, identity, Channel.SESSIONS, len(request.sessions), rules(**overrides))
    return caught.value


def test_a_good_batch_becomes_its_meta() -> None:
    request = batch(incarnation_id="inc-1", floor_sequence=3, sequence=7)
    meta = admit(request, EDGE_A, Channel.SESSIONS, 1, rules())
    assert meta == BatchMeta(
        batch_id=request.header.batch_id,
        sequence=7,
        agent_id="edge-a",
        region="eu",
        sent_time=NOW,
        channel=Channel.SESSIONS,
        digest=content_digest(request),
        floor_sequence=3,
        incarnation_id="inc-1",
    )


def test_a_resigned_resend_has_the_same_digest_and_other_content_does_not() -> None:
    first = batch(batch_id="b-1")
    resent = batch(batch_id="b-1", sent=NOW + timedelta(seconds=30), floor_sequence=1)
    other = batch(batch_id="b-1", sessions=2)
    digest = admit(first, EDGE_A, Channel.SESSIONS, 1, rules()).digest
    assert admit(resent, EDGE_A, Channel.SESSIONS, 1, rules()).digest == digest
    assert admit(other, EDGE_A, Channel.SESSIONS, 2, rules()).digest != digest
    # Computing the digest leaves the request as it was (the signature still verifies).
    assert admit(first, EDGE_A, Channel.SESSIONS, 1, rules()).digest == digest


@pytest.mark.parametrize(
    ("request_", "kind", "reason"),
    [
        pytest.param(batch("edge-b"), PermissionDenied, "AGENT_MISMATCH", id="another-edge"),
        pytest.param(batch(key=b"not-the-key"), Unauthenticated, "BAD_SIGNATURE", id="wrong-key"),
        pytest.param(batch(sent=NOW - timedelta(minutes=10)), Unauthenticated, "STALE_BATCH", id="stale"),
        pytest.param(batch(sent=NOW + timedelta(minutes=10)), Unauthenticated, "STALE_BATCH", id="from-the-future"),
        pytest.param(batch(sent=None), Unauthenticated, "STALE_BATCH", id="no-sent-time"),
        pytest.param(batch(batch_id=""), InvalidArgument, "MISSING_BATCH_ID", id="no-batch-id"),
        pytest.param(batch(sequence=0), InvalidArgument, "BAD_SEQUENCE", id="sequence-0"),
        pytest.param(batch(batch_id="b" * 300), InvalidArgument, "VALUE_TOO_LONG", id="long-batch-id"),
        pytest.param(batch(region="r" * 1000), InvalidArgument, "VALUE_TOO_LONG", id="long-region"),
        pytest.param(batch(incarnation_id="i" * 65), InvalidArgument, "BAD_INCARNATION_ID", id="long-incarnation"),
    ],
)
def test_each_refusal_has_its_status_and_reason(
    request_: sync_pb2.SyncSessionsRequest, kind: type[AeternaError], reason: str
) -> None:
    error = refusal(request_)
    assert type(error) is kind
    assert error.reason == reason


def test_messages_and_metadata_of_the_batch_refusals() -> None:
    stale = batch(batch_id="b-stale", sent=NOW - timedelta(minutes=10))
    error = refusal(stale)
    assert error.message == (
        f"batch b-stale was sent at {(NOW - timedelta(minutes=10)).isoformat()}, outside the freshness window "
        "of 300 s; re-sign it with the current time"
    )
    assert error.metadata == {"batch_id": "b-stale"}
    error = refusal(batch(batch_id="b-forged", key=b"x"))
    assert error.message == "batch b-forged has no valid signature for agent 'edge-a'"
    assert error.metadata == {"batch_id": "b-forged"}
    error = refusal(batch("edge-b"))
    assert error.message == "credential of 'edge-a' cannot act for agent 'edge-b'"
    assert error.metadata == {"claimed_agent_id": "edge-b"}


def test_an_agent_without_a_key_is_refused_as_a_bad_signature() -> None:
    error = refusal(batch("edge-c"), Identity(agent_id="edge-c"))
    assert (type(error), error.reason) == (Unauthenticated, "BAD_SIGNATURE")


def test_a_tampered_item_breaks_the_signature() -> None:
    request = batch()
    request.sessions[0].user_id = "someone-else"
    assert refusal(request).reason == "BAD_SIGNATURE"


def test_a_sent_time_out_of_range_is_invalid_not_stale() -> None:
    request = batch(sent=None)
    request.header.sent_time.seconds = 10**12
    sign_batch(request, KEY)
    error = refusal(request)
    assert (type(error), error.reason) == (InvalidArgument, "INVALID_TIMESTAMP")


def test_the_checks_run_in_their_documented_order() -> None:
    """Identity, then size, then signature, then the header's fields, then freshness."""
    tiny: dict[str, Any] = {"max_items": dict.fromkeys(Channel, 1)}
    # Another agent's oversized, unsigned, stale batch: the identity is checked first.
    worst = batch("edge-b", sessions=2, key=b"x", sent=NOW - timedelta(days=1), sequence=0)
    assert refusal(worst, **tiny).reason == "AGENT_MISMATCH"
    # Then the item limit, before any signature work.
    oversized = batch(sessions=2, key=b"x", sent=NOW - timedelta(days=1), sequence=0)
    error = refusal(oversized, **tiny)
    assert (error.reason, error.metadata) == ("BATCH_TOO_LARGE", {"limit": "1"})
    # A tampered batch is reported as such, whatever its time or header.
    assert refusal(batch(key=b"x", sent=NOW - timedelta(days=1), sequence=0)).reason == "BAD_SIGNATURE"
    # A signed batch with a bad header and a stale time: the header comes first.
    assert refusal(batch(sent=NOW - timedelta(days=1), sequence=0)).reason == "BAD_SEQUENCE"
    assert refusal(batch(sent=None, incarnation_id="i" * 65)).reason == "BAD_INCARNATION_ID"


def test_item_limits_per_channel_follow_the_config() -> None:
    config = AeternaConfig.model_validate({"sync": {"batch": {"maxSize": 10}}})
    limits = AdmissionRules.from_config(config.sync, lambda _agent: KEY, lambda: NOW).max_items
    assert limits[Channel.SESSIONS] == 10
    assert limits[Channel.DECISIONS] == 100_000
    assert admit(batch(sessions=10), EDGE_A, Channel.SESSIONS, 10, rules(max_items=limits)).sequence == 1
    assert refusal(batch(sessions=11), max_items=limits).reason == "BATCH_TOO_LARGE"


def test_every_batch_request_type_is_admitted_by_the_same_step() -> None:
    header = sync_pb2.BatchHeader(batch_id="b-1", sequence=1, agent_id="edge-a")
    header.sent_time.FromDatetime(NOW)
    requests: list[tuple[Any, Channel]] = [
        (sync_pb2.SyncVectorsRequest(header=header, vectors=[memory_pb2.Vector(vector_id="v")]), Channel.VECTORS),
        (
            sync_pb2.ReplayDecisionsRequest(header=header, decisions=[decision_pb2.Decision(decision_id="d")]),
            Channel.DECISIONS,
        ),
        (
            sync_pb2.AppendEpisodesRequest(header=header, episodes=[memory_pb2.Episode(episode_id="e")]),
            Channel.EPISODES,
        ),
    ]
    for request, channel in requests:
        sign_batch(request, KEY)
        assert admit(request, EDGE_A, channel, 1, rules()).channel is channel
        request.header.agent_id = "edge-b"
        with pytest.raises(PermissionDenied):
            admit(request, EDGE_A, channel, 1, rules())


# --- the ack in the batch ledger --------------------------------------------------------

# An ack as the ledger stored it before the verdicts became a typed field (bytes of the
# previous ``Ack.to_bytes``): rows like it are in PostgreSQL and answer duplicates.
STORED_DECISIONS_ACK = (
    b'{"batch_id":"b-1","checkpoint":4,"extra":{"results":[["d-1",1,"",""],["d-2",4,"d-0","c-9"]]},'
    b'"failed":1,"failures":[{"item_id":"d-3","message":"decide_time is required","reason":"INVALID_DECISION"}],'
    b'"processed":2,"sequence":4,"status":2}'
)
STORED_SESSIONS_ACK = (
    b'{"batch_id":"b-2","checkpoint":9,"extra":{},"failed":0,"failures":[],"processed":3,"sequence":9,"status":1}'
)
STORED_EMPTY_DECISIONS_ACK = (
    b'{"batch_id":"b-3","checkpoint":1,"extra":{"results":[]},"failed":0,"failures":[],"processed":0,'
    b'"sequence":1,"status":1}'
)


def test_an_ack_stored_before_the_typed_results_still_decodes() -> None:
    ack = Ack.from_bytes(STORED_DECISIONS_ACK)
    assert ack == Ack(
        batch_id="b-1",
        sequence=4,
        status=AckStatus.PARTIAL,
        processed=2,
        failed=1,
        failures=(ItemFailure("d-3", "INVALID_DECISION", "decide_time is required"),),
        checkpoint=4,
        results=(DecisionResult("d-1", 1), DecisionResult("d-2", 4, "d-0", "c-9")),
    )
    # Stored again, it is the very same bytes: old and new replicas read each other's rows.
    assert ack.to_bytes() == STORED_DECISIONS_ACK
    assert Ack.from_bytes(STORED_SESSIONS_ACK).to_bytes() == STORED_SESSIONS_ACK
    assert Ack.from_bytes(STORED_EMPTY_DECISIONS_ACK).results == ()


def test_a_duplicate_repeats_the_stored_verdicts() -> None:
    duplicate = Ack.from_bytes(STORED_DECISIONS_ACK).as_duplicate(checkpoint=6)
    assert duplicate.status is AckStatus.DUPLICATE
    assert duplicate.checkpoint == 6
    assert [r.conflict_id for r in duplicate.results] == ["", "c-9"]


# --- AIP-158 pages ----------------------------------------------------------------------

PAGE_KEY = b"k" * 32


async def list_page(rows: Sequence[int], size: int, token: str, query: Sequence[object] = ("numbers",)) -> Any:
    """One page of ``rows`` (ordered ints) through ``page_tokens.paginate``."""

    async def fetch(after: page_tokens.Position | None, limit: int) -> list[int]:
        start = int(after[0]) if after else -1
        return [row for row in rows if row > start][:limit]

    return await page_tokens.paginate(
        PAGE_KEY,
        page_size_requested=size,
        page_token=token,
        query=query,
        fetch=fetch,
        position_of=lambda last: [last],
    )


async def test_pages_cover_every_row_once_and_the_last_has_no_token() -> None:
    rows = list(range(7))
    seen: list[int] = []
    token, pages = "", 0
    while True:
        page, token = await list_page(rows, 3, token)
        seen += page
        pages += 1
        if not token:
            break
    assert (seen, pages) == (rows, 3)
    # Exactly a page's worth: no token, no empty page after it.
    assert await list_page(list(range(3)), 3, "") == ([0, 1, 2], "")


async def test_a_token_of_another_query_or_altered_is_invalid() -> None:
    _, token = await list_page(list(range(5)), 2, "")
    for bad, query in [(token, ("other",)), (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), ("numbers",))]:
        with pytest.raises(InvalidArgument) as caught:
            await list_page(list(range(5)), 2, bad, query)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_page_sizes() -> None:
    assert len((await list_page(list(range(200)), 0, ""))[0]) == 100
    assert len((await list_page(list(range(2000)), 5000, ""))[0]) == 1000
    with pytest.raises(InvalidArgument) as caught:
        await list_page([], -1, "")
    assert caught.value.reason == "BAD_PAGE_SIZE"


def test_time_positions() -> None:
    assert page_tokens.time_position(None) is None
    assert page_tokens.time_position([NOW.isoformat(), "c-1"]) == (NOW, "c-1")
