"""Session memory at central: validate a batch's sessions and upsert the good ones in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aeterna_shared.errors import NotFound
from central_svc.batches import Ack, BatchMeta, ItemFailure
from central_svc.store.ledger import ApplyResult, BatchLedger, Connection


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


@dataclass(frozen=True)
class StoredSession:
    """A session as central holds it."""

    data: bytes
    agent_id: str
    synced_at: datetime


class SessionStore(Protocol):
    """Where sessions live (PostgreSQL in production and tests)."""

    async def upsert(
        self, connection: Connection, tenant_id: str, agent_id: str, rows: list[SessionRecord]
    ) -> set[str]:
        """Upsert rows (newer last_activity wins, own tenant only); return the ids that were written."""
        ...

    async def foreign(self, connection: Connection, tenant_id: str, session_ids: list[str]) -> set[str]:
        """The ids among ``session_ids`` that belong to another tenant."""
        ...

    async def get(self, tenant_id: str, session_id: str) -> StoredSession | None:
        """One session of the tenant, or None."""
        ...


def validate(record: SessionRecord, tenant_id: str) -> ItemFailure | None:
    """The reason a session cannot be applied, or None when it is fine."""
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

    def __init__(self, ledger: BatchLedger, store: SessionStore) -> None:
        self._ledger = ledger
        self._store = store

    async def ingest(self, meta: BatchMeta, tenant_id: str, records: list[SessionRecord]) -> Ack:
        """Apply one (already authenticated) batch; bad sessions fail alone."""
        failures: list[ItemFailure] = []
        latest: dict[str, SessionRecord] = {}
        for record in records:
            failure = validate(record, tenant_id)
            if failure is not None:
                failures.append(failure)
                continue
            # One statement cannot touch a row twice: within a batch, the newest version of a session wins.
            previous = latest.get(record.session_id)
            if previous is None or (previous.last_activity or record.last_activity) <= record.last_activity:  # type: ignore[operator]
                latest[record.session_id] = record

        async def apply(connection: Connection) -> ApplyResult:
            rows = list(latest.values())
            written = await self._store.upsert(connection, tenant_id, meta.agent_id, rows) if rows else set()
            missing = [row.session_id for row in rows if row.session_id not in written]
            item_failures = list(failures)
            if missing:
                # Not written means either an older version (a no-op, not a failure) or another tenant's session.
                for session_id in sorted(await self._store.foreign(connection, tenant_id, missing)):
                    item_failures.append(
                        ItemFailure(
                            session_id, "SESSION_OWNED_BY_OTHER_TENANT", "the session belongs to another tenant"
                        )
                    )
            applied = len(records) - len(item_failures)
            return applied, item_failures, {}

        return await self._ledger.run(meta, tenant_id, apply)

    async def get(self, tenant_id: str, session_id: str) -> StoredSession:
        """A session of the caller's tenant; NOT_FOUND for unknown ids and other tenants' sessions alike."""
        stored = await self._store.get(tenant_id, session_id)
        if stored is None:
            raise NotFound(
                f"no session {session_id!r}", reason="SESSION_NOT_FOUND", metadata={"session_id": session_id}
            )
        return stored
