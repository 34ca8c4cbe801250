"""The ports of central's domain: the stores, the batch ledger and the transaction they share.

The domain modules (``sessions``, ``replay``, ``vectors``, ``episodes``,
``edges``, ``policies``, ``snapshots``) decide what is written and what a
request may see; *where* it is written is an adapter's business
(``central_svc.store``: PostgreSQL, pgvector, Qdrant). The domain depends on
these Protocols only, and ``central_svc.deps`` wires the adapters in. That is
why no driver type appears here (no psycopg, no qdrant_client): a domain module
can be read, type-checked and tested without knowing which database is behind
it, and a driver's exception never reaches it either, because every adapter
raises the project's own errors (``aeterna_shared.errors``: ``Unavailable``
when the database cannot be reached, ``InvalidArgument`` for a value it cannot
hold; see ``central_svc.store.database``).

A ``Transaction`` is opaque to the domain: the ledger opens it for one batch
(the batch's item writes and its bookkeeping commit together or not at all)
and the domain only hands it on to the stores' write methods. Each adapter
knows what it really is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from central_svc.batches import Ack, BatchMeta, Channel, DecisionResult, ItemFailure

if TYPE_CHECKING:
    # Value types of the domain that cross the ports (the domain modules import this module at run time).
    from central_svc.edges import EdgeRow
    from central_svc.episodes import EpisodeFilter, EpisodeRecord, EpisodeRow
    from central_svc.policies import Bundle, PolicyContent
    from central_svc.replay import ConflictRecord, ConflictState, DecisionWrites, Held, Resolution
    from central_svc.sessions import HeldSession, MergedSession, SessionRecord, StoredSession, Upserted
    from central_svc.snapshots import SnapshotRow
    from central_svc.vectors import VectorHit, VectorQuery, VectorRecord


class Transaction(Protocol):
    """One open transaction on central's database, in which a batch is applied.

    The domain never looks inside: it receives one from ``BatchLedger.run`` and
    passes it to the stores, whose adapter narrows it to its own connection type.
    """


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying a batch's items did (returned by the ``Apply`` step the ledger runs)."""

    count: int
    """How many items count as applied (the batch's items minus ``failures``)."""
    failures: tuple[ItemFailure, ...] = ()
    """The items that were not applied, and why."""
    results: tuple[DecisionResult, ...] = ()
    """Per-item verdicts that the ack (and a resend's DUPLICATE ack) carries (decision replay)."""


Apply = Callable[[Transaction], Awaitable[Applied]]
"""A batch's item writes, run by the ledger inside the batch's transaction."""


class BatchLedger(Protocol):
    """At-most-once application of batches, and the checkpoints of edge incarnations."""

    async def run(self, meta: BatchMeta, tenant_id: str, apply: Apply, *, pipelined: bool = False) -> Ack:
        """Run ``apply`` and the batch's bookkeeping in one transaction; a resend gets the stored ack (DUPLICATE).

        ``pipelined``: ``apply`` only runs statements on the transaction and reads back every result
        it relies on, so the adapter may send statements ahead of their results (fewer round trips).
        """
        ...

    async def checkpoints(self, agent_id: str, incarnation_id: str = "") -> dict[int, int]:
        """Channel -> contiguous checkpoint of ``agent_id``'s incarnation ``incarnation_id``."""
        ...

    async def stored_acks(
        self, agent_id: str, incarnation_id: str, batch_ids: Sequence[str]
    ) -> list[tuple[Channel, Ack]]:
        """The stored acks (as DUPLICATE) of those ``batch_ids`` this incarnation applied, in the order named.

        Ids of batches never applied, or of another agent's or incarnation's batches, are left out.
        """
        ...


class SessionMerger(Protocol):
    """Merges an append into a stored session (the wire encoding's business, so the API layer supplies it)."""

    def merge(self, stored: bytes | None, append: bytes, tenant_id: str) -> MergedSession:
        """``stored`` (None: no session yet) with ``append``'s new turns and state keys."""
        ...


class SessionStore(Protocol):
    """Where sessions live (PostgreSQL in production and tests)."""

    async def upsert(
        self, transaction: Transaction, tenant_id: str, agent_id: str, rows: list[SessionRecord]
    ) -> Upserted:
        """Upsert rows (newer last_activity wins, own tenant only); the ids written and those of other tenants."""
        ...

    async def lock_for_merge(
        self, transaction: Transaction, tenant_id: str, agent_id: str, session_ids: list[str]
    ) -> dict[str, HeldSession]:
        """Lock the rows of ``session_ids`` (creating empty ones for the caller's tenant where none exist)."""
        ...

    async def write_merged(self, transaction: Transaction, agent_id: str, merged: dict[str, MergedSession]) -> None:
        """Store merged sessions into the rows ``lock_for_merge`` locked."""
        ...

    async def get(self, tenant_id: str, session_id: str) -> StoredSession | None:
        """One session of the tenant, or None."""
        ...


class DecisionStore(Protocol):
    """The decision log and the review queue."""

    async def hold(self, transaction: Transaction, tenant_id: str, ids: list[str], resources: list[str]) -> Held:
        """Lock ``resources`` for this transaction (one global order), then read which of ``ids`` the log
        holds and the effective decision per resource (locked too)."""
        ...

    async def write(self, transaction: Transaction, tenant_id: str, agent_id: str, writes: DecisionWrites) -> None:
        """Insert the new decisions, mark the superseded ones, open the review items."""
        ...

    async def list_conflicts(
        self, tenant_id: str, state: ConflictState | None, after: tuple[datetime, str] | None, limit: int
    ) -> list[ConflictRecord]:
        """Review items oldest first, after the given (created_at, id) position."""
        ...

    async def resolve(
        self, tenant_id: str, conflict_id: str, resolution: Resolution, resolver: str, note: str
    ) -> ConflictRecord | None:
        """Settle a pending item; return it (also when it was already settled) or None when unknown."""
        ...

    async def pending_conflicts(self) -> int:
        """Review items waiting for a person, all tenants."""
        ...


class EpisodeStore(Protocol):
    """Where episodes live."""

    async def insert(self, transaction: Transaction, tenant_id: str, rows: list[EpisodeRecord]) -> None:
        """Insert rows; existing episode ids are left alone."""
        ...

    async def page(self, query: EpisodeFilter, after: tuple[datetime, str] | None, limit: int) -> list[EpisodeRow]:
        """Episodes oldest first by (occur_time, episode_id), after the given position."""
        ...


class SnapshotSource(Protocol):
    """Bulk access to episodes, for snapshots."""

    def export(self) -> AsyncIterator[SnapshotRow]:
        """Every episode."""
        ...

    async def import_rows(self, rows: list[SnapshotRow]) -> int:
        """Insert rows not yet present; return how many were new."""
        ...


class LeaderLock(Protocol):
    """A lock at most one of several central replicas holds, for work only one of them may do (snapshots)."""

    async def hold(self) -> bool:
        """True while this replica holds the lock: take it when it is free, or confirm it is still held.

        False when another replica holds it, or when the lock was lost (this
        replica's hold on it ended with its connection); ``Unavailable`` when
        the database cannot be asked, which also means the lock is not held.
        """
        ...

    async def release(self) -> None:
        """Give the lock up (another replica may take it) and close what holds it."""
        ...


class VectorIndex(Protocol):
    """Where central's complete vector graph lives."""

    async def upsert(
        self, tenant_id: str, agent_id: str, rows: list[VectorRecord], *, within: Transaction | None = None
    ) -> None:
        """Upsert rows (newer update_time wins); ``within`` is the ledger's transaction when the index can join it."""
        ...

    async def search(self, query: VectorQuery) -> list[VectorHit]:
        """Best hits first, at most ``limit``, each with score >= ``score_threshold``."""
        ...


class EdgeStore(Protocol):
    """The edge registry table (batches update it through the ledger)."""

    async def depart(self, agent_id: str, tenant_id: str, reason: str) -> None:
        """Mark the edge as gone on purpose."""
        ...

    async def page(self, tenant_id: str | None, after: str, limit: int) -> list[EdgeRow]:
        """Rows ordered by agent id after ``after``; all tenants when ``tenant_id`` is None."""
        ...


class PolicyStore(Protocol):
    """Versioned policy bundles."""

    async def publish(self, content: PolicyContent, checksum: str, publisher: str, expected_version: int) -> Bundle:
        """Store the next version (ABORTED when ``expected_version`` is set and not current) and notify replicas."""
        ...

    async def latest(self) -> Bundle | None:
        """The newest bundle."""
        ...

    async def get(self, version: int) -> Bundle | None:
        """One version."""
        ...

    async def newer_than(self, version: int) -> list[Bundle]:
        """Every bundle with a higher version, oldest first."""
        ...
