"""Decision replay under each conflict policy, and the manual review round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.wire.canonical import sign_batch
from tests.central.conftest import Central, Edge, StartCentral, now_stamp

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def decision(
    decision_id: str, at: datetime, effect: decision_pb2.Effect.ValueType = decision_pb2.EFFECT_ALLOW
) -> decision_pb2.Decision:
    return decision_pb2.Decision(
        decision_id=decision_id,
        decide_time=now_stamp(at),
        principal='User::"alice"',
        action='Action::"approve"',
        resource='Document::"r1"',
        effect=effect,
    )


async def replay(central: Central, edge: Edge, *decisions: decision_pb2.Decision) -> sync_pb2.ReplayDecisionsResponse:
    request = sync_pb2.ReplayDecisionsRequest(header=edge.header("decisions"), decisions=decisions)
    sign_batch(request, edge.key)
    response: sync_pb2.ReplayDecisionsResponse = await central.sync.ReplayDecisions(request, metadata=edge.metadata)
    return response


async def conflict_setup(central: Central) -> sync_pb2.ReplayDecisionsResponse:
    """Central holds a decision at T0+10min; an offline edge replays one from T0."""
    online, offline = Edge("edge-online"), Edge("edge-offline")
    first = await replay(central, online, decision("late", T0 + timedelta(minutes=10), decision_pb2.EFFECT_DENY))
    assert first.results[0].outcome == sync_pb2.REPLAY_OUTCOME_APPLIED
    return await replay(central, offline, decision("early", T0))


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        ("timestamp", sync_pb2.REPLAY_OUTCOME_SUPERSEDED),
        ("central", sync_pb2.REPLAY_OUTCOME_REJECTED),
        ("manual", sync_pb2.REPLAY_OUTCOME_NEEDS_REVIEW),
    ],
)
async def test_conflict_policy(start_central: StartCentral, policy: str, outcome: int) -> None:
    central = await start_central(**{"aeterna.offline.conflictResolution": policy})
    response = await conflict_setup(central)
    [result] = response.results
    assert (result.decision_id, result.outcome, result.conflicting_decision_id) == ("early", outcome, "late")
    assert bool(result.conflict_id) == (policy == "manual")


async def test_per_action_policy_overrides_the_default(start_central: StartCentral) -> None:
    central = await start_central(
        **{
            "aeterna.offline.conflictResolution": "timestamp",
            "aeterna.offline.conflictResolutionByAction": {'Action::"approve"': "manual"},
        }
    )
    approve = await conflict_setup(central)
    assert approve.results[0].outcome == sync_pb2.REPLAY_OUTCOME_NEEDS_REVIEW
    online, offline = Edge("edge-online"), Edge("edge-offline")
    late_read = decision("late-read", T0 + timedelta(minutes=10))
    late_read.action = 'Action::"read"'
    late_read.resource = 'Document::"r2"'
    early_read = decision("early-read", T0)
    early_read.action = 'Action::"read"'
    early_read.resource = 'Document::"r2"'
    await replay(central, online, late_read)
    read = await replay(central, offline, early_read)
    assert read.results[0].outcome == sync_pb2.REPLAY_OUTCOME_SUPERSEDED


async def test_later_edge_decision_is_applied(central: Central) -> None:
    edge = Edge("edge-a")
    await replay(central, edge, decision("d1", T0))
    response = await replay(central, edge, decision("d2", T0 + timedelta(seconds=1)))
    assert response.results[0].outcome == sync_pb2.REPLAY_OUTCOME_APPLIED


async def test_same_decision_twice_is_duplicate(central: Central) -> None:
    edge = Edge("edge-a")
    await replay(central, edge, decision("d1", T0))
    response = await replay(central, edge, decision("d1", T0))
    assert response.results[0].outcome == sync_pb2.REPLAY_OUTCOME_DUPLICATE


async def test_manual_review_round_trip(start_central: StartCentral) -> None:
    central = await start_central(**{"aeterna.offline.conflictResolution": "manual"})
    reviewer = Edge("reviewer-bob")
    response = await conflict_setup(central)
    conflict_id = response.results[0].conflict_id
    pending = await central.sync.ListConflicts(
        sync_pb2.ListConflictsRequest(state=sync_pb2.CONFLICT_STATE_PENDING), metadata=reviewer.metadata
    )
    assert [c.conflict_id for c in pending.conflicts] == [conflict_id]
    assert pending.conflicts[0].edge_decision.decision_id == "early"
    assert pending.conflicts[0].edge_decision.agent_id == "edge-offline"
    assert pending.conflicts[0].central_decision.decision_id == "late"
    resolved = await central.sync.ResolveConflict(
        sync_pb2.ResolveConflictRequest(conflict_id=conflict_id, resolution=sync_pb2.RESOLUTION_KEEP_EDGE, note="ok"),
        metadata=reviewer.metadata,
    )
    assert resolved.conflict.state == sync_pb2.CONFLICT_STATE_RESOLVED
    assert resolved.conflict.resolved_by == "reviewer-bob"
    assert resolved.conflict.HasField("resolve_time")
    assert resolved.conflict.note == "ok"
    left = await central.sync.ListConflicts(
        sync_pb2.ListConflictsRequest(state=sync_pb2.CONFLICT_STATE_PENDING), metadata=reviewer.metadata
    )
    assert list(left.conflicts) == []
    # The edge's decision is now the effective one: a decision between the two times supersedes nothing later.
    after = await replay(central, Edge("edge-c"), decision("between", T0 + timedelta(minutes=5)))
    assert after.results[0].outcome == sync_pb2.REPLAY_OUTCOME_APPLIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.ResolveConflict(
            sync_pb2.ResolveConflictRequest(conflict_id=conflict_id, resolution=sync_pb2.RESOLUTION_KEEP_CENTRAL),
            metadata=reviewer.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_conflict_pages_and_bad_token(start_central: StartCentral) -> None:
    central = await start_central(**{"aeterna.offline.conflictResolution": "manual"})
    online, offline = Edge("on"), Edge("off")
    late = [decision(f"late-{i}", T0 + timedelta(hours=1)) for i in range(3)]
    for i, d in enumerate(late):
        d.resource = f'Document::"r{i}"'
    await replay(central, online, *late)
    early = [decision(f"early-{i}", T0) for i in range(3)]
    for i, d in enumerate(early):
        d.resource = f'Document::"r{i}"'
    await replay(central, offline, *early)
    seen: list[str] = []
    token = ""
    while True:
        page = await central.sync.ListConflicts(
            sync_pb2.ListConflictsRequest(page_size=2, page_token=token), metadata=online.metadata
        )
        seen += [c.edge_decision.decision_id for c in page.conflicts]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == ["early-0", "early-1", "early-2"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.ListConflicts(sync_pb2.ListConflictsRequest(page_token="garbage"), metadata=online.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
