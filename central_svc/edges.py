"""The edge registry: who synced when, from where, and whether it is online."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from central_svc.ports import EdgeStore


class EdgeState(IntEnum):
    """Values equal ``aeterna.sync.v1.EdgeState``."""

    ONLINE = 1
    OFFLINE = 2
    DEPARTED = 3


@dataclass(frozen=True)
class EdgeRow:
    """A registry row as stored."""

    agent_id: str
    tenant_id: str
    region: str
    last_sync_at: datetime | None
    last_seen_at: datetime
    departed_at: datetime | None
    incarnation_id: str = ""
    """The edge's newest incarnation (identity of its local state; '' before incarnations)."""
    incarnation_started_at: datetime | None = None
    """When central first heard from that incarnation."""
    incarnation_count: int = 0
    """How many incarnations of this agent id central has seen (more than one: re-provisioned)."""


@dataclass(frozen=True)
class EdgeView:
    """A registry row with its state computed."""

    row: EdgeRow
    state: EdgeState


def state_of(row: EdgeRow, now: datetime, offline_after: timedelta) -> EdgeState:
    """DEPARTED when it announced so (and has not synced since), OFFLINE after ``offline_after`` without a batch."""
    if row.departed_at is not None:
        return EdgeState.DEPARTED
    if row.last_sync_at is None or now - row.last_sync_at > offline_after:
        return EdgeState.OFFLINE
    return EdgeState.ONLINE


class EdgeRegistry:
    """Reads and announcements of the registry (batches update it through the ledger)."""

    def __init__(self, store: EdgeStore, offline_after: timedelta) -> None:
        self._store = store
        self.offline_after = offline_after

    async def depart(self, agent_id: str, tenant_id: str, reason: str) -> None:
        """Record an announced departure."""
        await self._store.depart(agent_id, tenant_id, reason)

    async def page(self, tenant_id: str | None, after: str, limit: int, now: datetime) -> list[EdgeView]:
        """A page of the registry with states as of ``now``."""
        rows = await self._store.page(tenant_id, after, limit)
        return [EdgeView(row, state_of(row, now, self.offline_after)) for row in rows]
