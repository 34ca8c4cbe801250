"""Session memory at central: validate a batch's items, then replace or merge sessions in one transaction.

A batch holds whole sessions (written by PutSession at an edge: the newer one
replaces central's copy) and appends (turns and state keys added at an edge
since its last sync). Appends merge: each turn is kept once per session by its
message id, after the turns already held, in the order sent; state keys
overwrite. The rows being merged are locked (``SELECT ... FOR UPDATE``, in id
order) for the transaction, so appends from several edges, or through several
central replicas, to one session all land.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aeterna_shared.errors import NotFound
from central_svc.batches import Ack, BatchMeta, ItemFailure
from central_svc.ports import Applied, BatchLedger, SessionMerger, SessionStore, Transaction


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session of a batch, as the API layer translated it."""

    session_id: str
    user_id: str
    last_activity: datetime | None
    checksum: str
    """The checksum the edge sent."""
    computed_checksum: str
    """The checksum of the canonical encoding, computed at central."""
    claimed_tenant_id: str
    """The tenant the payload names (may be empty); it must match the credential's."""
    data: bytes
    """The session's deterministic protobuf encoding, stored as is."""
    problem: str | None = None
    """Why the session's content cannot be stored (``aeterna_shared.limits``, naming the field), if so."""


@dataclass(frozen=True, slots=True)
class SessionAppendRecord:
    """One session append of a batch, as the API layer translated it."""

    session_id: str
    user_id: str
    last_activity: datetime | None
    checksum: str
    computed_checksum: str
    claimed_tenant_id: str
    message_ids: tuple[str, ...]
    """The ids of the appended turns, in order (each must be set)."""
    data: bytes
    """The append's deterministic protobuf encoding, merged by the ``SessionMerger``."""
    problem: str | None = None
    """Why the append's content cannot be stored (``aeterna_shared.limits``, naming the field), if so."""


@dataclass(frozen=True, slots=True)
class MergedSession:
    """A session after an append was merged into it."""

    data: bytes
    user_id: str
    last_activity: datetime
    checksum: str


@dataclass(frozen=True, slots=True)
class Upserted:
    """What an upsert of whole sessions did."""

    written: set[str]
    """Ids of the rows written (new, or newer than what central held)."""
    foreign: set[str]
    """Ids of the batch that belong to another tenant (never written)."""


@dataclass(frozen=True)
class HeldSession:
    """A session row locked for a merge."""

    tenant_id: str
    data: bytes | None
    """None when the session did not exist before this transaction."""


@dataclass(frozen=True)
class StoredSession:
    """A session as central holds it."""

    data: bytes
    agent_id: str
    synced_at: datetime


def validate(record: SessionRecord | SessionAppendRecord, tenant_id: str) -> ItemFailure | None:
    """The reason a session (or an append) cannot be applied, or None when it is fine."""
    if record.problem is not None:
        return ItemFailure(record.session_id, "INVALID_ITEM", record.problem)
    if isinstance(record, SessionAppendRecord) and not all(record.message_ids):
        return ItemFailure(record.session_id, "INVALID_SESSION", "every appended turn needs a message_id")
    if not record.session_id:
        return ItemFailure("", "INVALID_SESSION", "session_id is empty")
    if record.last_activity is None:
        return ItemFailure(record.session_id, "INVALID_SESSION", "last_activity_time is not set")
    if record.claimed_tenant_id and record.claimed_tenant_id != tenant_id:
        return ItemFailure(
            record.session_id, "TENANT_MISMATCH", f"session names tenant {record.claimed_tenant_id!r}, not the caller's"
        )
    if record.checksum != record.computed_checksum:
        return ItemFailure(
            record.session_id,
            "CHECKSUM_MISMATCH",
            f"checksum {record.checksum[:16]!r}... does not match the session's content",
        )
    return None


class SessionSync:
    """Applies session batches and serves session reads."""

    def __init__(self, ledger: BatchLedger, store: SessionStore, merger: SessionMerger) -> None:
        self._ledger = ledger
        self._store = store
        self._merger = merger

    async def ingest(
        self,
        meta: BatchMeta,
        tenant_id: str,
        records: list[SessionRecord],
        appends: list[SessionAppendRecord] | None = None,
    ) -> Ack:
        """Apply one (already authenticated) batch; bad items fail alone."""
        failures: list[ItemFailure] = []
        latest: dict[str, SessionRecord] = {}
        for record in records:
            failure = validate(record, tenant_id)
            if failure is not None:
                failures.append(failure)
                continue
            # One statement cannot touch a row twice: within a batch, the newest version of a session wins.
            previous = latest.get(record.session_id)
            assert record.last_activity is not None  # validate() refuses a session without one
            if previous is None or (previous.last_activity or record.last_activity) <= record.last_activity:
                latest[record.session_id] = record
        merges: dict[str, list[SessionAppendRecord]] = {}
        for append in appends or []:
            failure = validate(append, tenant_id)
            if failure is not None:
                failures.append(failure)
                continue
            merges.setdefault(append.session_id, []).append(append)
        total = len(records) + len(appends or [])

        async def apply(transaction: Transaction) -> Applied:
            rows = [latest[session_id] for session_id in sorted(latest)]  # rows locked in one order: no deadlock
            item_failures = list(failures)
            if rows:
                upserted = await self._store.upsert(transaction, tenant_id, meta.agent_id, rows)
                # Not written means either an older version (a no-op, not a failure) or another tenant's session.
                missing = {row.session_id for row in rows if row.session_id not in upserted.written}
                item_failures += [_foreign(session_id) for session_id in sorted(upserted.foreign & missing)]
            if merges:
                item_failures += await self._merge(transaction, tenant_id, meta.agent_id, merges)
            return Applied(total - len(item_failures), tuple(item_failures))

        return await self._ledger.run(meta, tenant_id, apply, pipelined=True)

    async def _merge(
        self, transaction: Transaction, tenant_id: str, agent_id: str, merges: dict[str, list[SessionAppendRecord]]
    ) -> list[ItemFailure]:
        held = await self._store.lock_for_merge(transaction, tenant_id, agent_id, sorted(merges))
        merged: dict[str, MergedSession] = {}
        failures: list[ItemFailure] = []
        for session_id, appends in merges.items():
            row = held[session_id]
            if row.tenant_id != tenant_id:
                failures += [_foreign(session_id) for _ in appends]
                continue
            current = row.data
            for append in appends:
                result = self._merger.merge(current, append.data, tenant_id)
                current = result.data
                merged[session_id] = result
        if merged:
            await self._store.write_merged(transaction, agent_id, merged)
        return failures

    async def get(self, tenant_id: str, session_id: str) -> StoredSession:
        """A session of the caller's tenant; NOT_FOUND for unknown ids and other tenants' sessions alike."""
        stored = await self._store.get(tenant_id, session_id)
        if stored is None:
            raise NotFound(
                f"no session {session_id!r}", reason="SESSION_NOT_FOUND", metadata={"session_id": session_id}
            )
        return stored


def _foreign(session_id: str) -> ItemFailure:
    return ItemFailure(session_id, "SESSION_OWNED_BY_OTHER_TENANT", "the session belongs to another tenant")
