"""Decision replay: store decisions edges made (often offline) and settle conflicts by policy.

A replayed decision conflicts when central already holds a *later* effective
decision on the same resource (of the same tenant). Then, by
``aeterna.offline.conflictResolution``:

* ``timestamp``: the later one wins; the replayed one is kept as SUPERSEDED history;
* ``central``:   the replayed one is REJECTED;
* ``manual``:    the replayed one is held (NEEDS_REVIEW) and a review item is opened.

``aeterna.offline.conflictResolutionByAction`` can give single actions their
own policy, for example manual review for approvals and timestamps for the rest.

Without a conflict the replayed decision becomes the effective one (APPLIED)
and the decision it follows is marked superseded. A decision id seen before is
a DUPLICATE and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal

from aeterna_shared import limits
from aeterna_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from central_svc.batches import Ack, BatchMeta, DecisionResult, ItemFailure
from central_svc.ports import Applied, BatchLedger, DecisionStore, Transaction

ConflictPolicy = Literal["timestamp", "central", "manual"]


class Outcome(IntEnum):
    """Values equal ``aeterna.sync.v1.ReplayOutcome``."""

    APPLIED = 1
    SUPERSEDED = 2
    REJECTED = 3
    NEEDS_REVIEW = 4
    DUPLICATE = 5


class Status:
    """Values of ``decisions.status``."""

    EFFECTIVE = "effective"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    PENDING_REVIEW = "pending_review"


class ConflictState(IntEnum):
    """Values equal ``aeterna.sync.v1.ConflictState``."""

    PENDING = 1
    RESOLVED = 2


class Resolution(IntEnum):
    """Values equal ``aeterna.sync.v1.Resolution``."""

    KEEP_EDGE = 1
    KEEP_CENTRAL = 2


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One replayed decision, translated by the API layer."""

    decision_id: str
    resource: str
    decide_time: datetime | None
    data: bytes
    """Deterministic protobuf encoding (with agent_id set from the credential)."""
    action: str = ""
    """Cedar action uid; it picks the conflict policy when there are per-action overrides."""
    principal: str = ""
    """Cedar principal uid (checked against ``aeterna_shared.limits``; stored inside ``data``)."""
    metadata: Any = None
    """The decision's metadata, JSON data or a protobuf Struct (checked, stored inside ``data``)."""
    problem: str = ""
    """Why the API layer could not translate the item (it then fails alone); empty when it could."""


@dataclass(frozen=True, slots=True)
class Effective:
    """The effective decision on a resource."""

    decision_id: str
    decide_time: datetime


@dataclass(frozen=True, slots=True)
class Held:
    """What the log holds for a replayed batch, read under the locks of the batch's resources."""

    known: set[str]
    """Ids of the batch already in the log (DUPLICATE)."""
    effective: dict[str, Effective]
    """The effective decision per resource of the batch (resources without one are absent)."""


@dataclass(frozen=True)
class ConflictRecord:
    """A review item with both decisions' encodings."""

    conflict_id: str
    edge_decision: bytes
    central_decision: bytes
    state: ConflictState
    resolution: int
    resolved_by: str
    resolved_at: datetime | None
    created_at: datetime
    note: str


@dataclass(frozen=True, slots=True)
class NewDecision:
    """A row to insert into the decision log."""

    record: DecisionRecord
    status: str


@dataclass(frozen=True, slots=True)
class NewConflict:
    """A review item to open: a replayed decision held against the effective one it conflicts with."""

    conflict_id: str
    edge_decision_id: str
    central_decision_id: str


@dataclass(frozen=True, slots=True)
class DecisionWrites:
    """What one replayed batch writes to the decision log and the review queue."""

    rows: list[NewDecision]
    """Decisions to insert."""
    superseded: list[str]
    """Ids of decisions already in the log that are no longer effective."""
    conflicts: list[NewConflict]
    """Review items to open."""


@dataclass(frozen=True, slots=True)
class Ruling:
    """What ``judge`` decided for one replayed decision."""

    outcome: Outcome
    conflicting_decision_id: str = ""
    """The effective decision it lost to or is held against ('' when it was applied)."""


def judge(policy: ConflictPolicy, decide_time: datetime, current: Effective | None) -> Ruling:
    """The outcome of a decision made at ``decide_time`` given the resource's effective decision."""
    if current is None or current.decide_time <= decide_time:
        return Ruling(Outcome.APPLIED)
    if policy == "timestamp":
        return Ruling(Outcome.SUPERSEDED, current.decision_id)
    if policy == "central":
        return Ruling(Outcome.REJECTED, current.decision_id)
    return Ruling(Outcome.NEEDS_REVIEW, current.decision_id)


def _decision_order(record: DecisionRecord) -> tuple[datetime | None, str]:
    return record.decide_time, record.decision_id


_STATUS_OF = {
    Outcome.APPLIED: Status.EFFECTIVE,
    Outcome.SUPERSEDED: Status.SUPERSEDED,
    Outcome.REJECTED: Status.REJECTED,
    Outcome.NEEDS_REVIEW: Status.PENDING_REVIEW,
}


class DecisionReplay:
    """Replays decision batches and runs the manual review queue."""

    def __init__(
        self,
        ledger: BatchLedger,
        store: DecisionStore,
        policy: ConflictPolicy,
        by_action: Mapping[str, ConflictPolicy] | None = None,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self.policy: ConflictPolicy = policy
        self._by_action = dict(by_action or {})

    def policy_for(self, action: str) -> ConflictPolicy:
        """The conflict policy for decisions on ``action``."""
        return self._by_action.get(action, self.policy)

    async def replay(self, meta: BatchMeta, tenant_id: str, records: list[DecisionRecord]) -> Ack:
        """Apply a batch; the ack's ``results`` hold one verdict per decision, in order.

        A decision that breaks ``aeterna_shared.limits`` (or is incomplete) fails
        alone as an ``ItemFailure``; the rest of the batch is applied.
        """
        failures: list[ItemFailure] = []
        valid: list[DecisionRecord] = []
        seen: set[str] = set()
        for index, record in enumerate(records):
            invalid = record.problem or limits.problem_of(
                limits.validate_decision,
                decision_id=record.decision_id,
                principal=record.principal,
                action=record.action,
                resource=record.resource,
                metadata=record.metadata,
                field=f"decisions[{index}]",
            )
            if invalid:
                # A value PostgreSQL cannot hold (a NUL, a resource too long for the index) fails alone
                # here, instead of failing the whole batch in the database.
                failures.append(ItemFailure(record.decision_id, limits.ITEM_FAILURE_REASON, invalid))
            elif not record.decision_id or not record.resource or record.decide_time is None:
                failures.append(
                    ItemFailure(
                        record.decision_id, "INVALID_DECISION", "decision_id, resource and decide_time are required"
                    )
                )
            elif record.decision_id in seen:
                continue
            else:
                seen.add(record.decision_id)
                valid.append(record)

        async def apply(transaction: Transaction) -> Applied:
            # The resources are locked before the log is read, so a concurrent replay of the same ids or
            # resources is seen as committed (extra entries for duplicates' resources are never looked at).
            held = await self._store.hold(
                transaction, tenant_id, [r.decision_id for r in valid], sorted({r.resource for r in valid})
            )
            known, current = held.known, held.effective
            fresh = [r for r in valid if r.decision_id not in known]
            verdicts: dict[str, DecisionResult] = {d: DecisionResult(d, int(Outcome.DUPLICATE)) for d in known}
            rows: list[NewDecision] = []
            superseded: list[str] = []
            conflicts: list[NewConflict] = []
            # In decision order, so that a batch that holds several decisions on one resource settles them in turn.
            for record in sorted(fresh, key=_decision_order):
                assert record.decide_time is not None
                effective = current.get(record.resource)
                ruling = judge(self.policy_for(record.action), record.decide_time, effective)
                outcome, conflicting = ruling.outcome, ruling.conflicting_decision_id
                conflict_id = ""
                if outcome is Outcome.APPLIED:
                    if effective is not None:
                        superseded.append(effective.decision_id)
                    current[record.resource] = Effective(record.decision_id, record.decide_time)
                elif outcome is Outcome.NEEDS_REVIEW:
                    conflict_id = str(uuid.uuid4())
                    conflicts.append(NewConflict(conflict_id, record.decision_id, conflicting))
                rows.append(NewDecision(record, _STATUS_OF[outcome]))
                verdicts[record.decision_id] = DecisionResult(
                    record.decision_id, int(outcome), conflicting, conflict_id
                )
            # A decision applied and then superseded within this batch is inserted as superseded directly.
            fresh_ids = {row.record.decision_id for row in rows}
            final_superseded = set(superseded)
            rows = [
                NewDecision(row.record, Status.SUPERSEDED) if row.record.decision_id in final_superseded else row
                for row in rows
            ]
            writes = DecisionWrites(rows, [d for d in superseded if d not in fresh_ids], conflicts)
            await self._store.write(transaction, tenant_id, meta.agent_id, writes)
            results = tuple(v for r in records if (v := verdicts.get(r.decision_id)) is not None)
            return Applied(len(records) - len(failures), tuple(failures), results)

        return await self._ledger.run(meta, tenant_id, apply, pipelined=True)

    async def list_conflicts(
        self, tenant_id: str, state: ConflictState | None, after: tuple[datetime, str] | None, limit: int
    ) -> list[ConflictRecord]:
        """A page of review items."""
        return await self._store.list_conflicts(tenant_id, state, after, limit)

    async def pending_conflicts(self) -> int:
        """Review items waiting for a person (the ``aeterna_replay_conflicts_open`` gauge)."""
        return await self._store.pending_conflicts()

    async def resolve(
        self, tenant_id: str, conflict_id: str, resolution: Resolution | None, resolver: str, note: str
    ) -> ConflictRecord:
        """Settle a review item, recording who and when."""
        if resolution is None:
            raise InvalidArgument.for_field(
                "resolution", "choose KEEP_EDGE or KEEP_CENTRAL", reason="MISSING_RESOLUTION"
            )
        try:
            uuid.UUID(conflict_id)
        except ValueError:
            raise InvalidArgument.for_field("conflict_id", "not a conflict id", reason="BAD_CONFLICT_ID") from None
        record = await self._store.resolve(tenant_id, conflict_id, resolution, resolver, note)
        if record is None:
            raise NotFound(f"no conflict {conflict_id}", reason="CONFLICT_NOT_FOUND")
        if record.resolution != int(resolution):
            raise FailedPrecondition(
                f"conflict {conflict_id} was already resolved by {record.resolved_by}", reason="ALREADY_RESOLVED"
            )
        return record
