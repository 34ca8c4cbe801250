"""Episodic memory at central, its only store: idempotent appends and paginated listing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aeterna_shared import limits
from central_svc.batches import Ack, BatchMeta, ItemFailure
from central_svc.ports import Applied, BatchLedger, EpisodeStore, Transaction
from central_svc.vectors import embedding_problem


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One episode, translated by the API layer (``data`` is its deterministic protobuf encoding)."""

    episode_id: str
    session_id: str
    agent_id: str
    content: str
    embedding: list[float]
    occur_time: datetime | None
    data: bytes
    claimed_tenant_id: str = ""
    metadata: Any = None
    """The episode's metadata (JSON data or a protobuf Struct), checked against ``aeterna_shared.limits``."""
    problem: str = ""
    """Why the API layer could not translate the item (it then fails alone); empty when it could."""


@dataclass(frozen=True)
class EpisodeFilter:
    """What to list; the tenant always comes from the credential."""

    tenant_id: str
    session_id: str = ""
    agent_id: str = ""
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    """One listed episode: its position in the listing and its encoding."""

    occur_time: datetime
    episode_id: str
    data: bytes
    """The episode's deterministic protobuf encoding, as stored."""


class EpisodicMemory:
    """Append and list episodes."""

    def __init__(self, ledger: BatchLedger, store: EpisodeStore, dimension: int) -> None:
        self._ledger = ledger
        self._store = store
        self._dimension = dimension

    async def append(self, meta: BatchMeta, tenant_id: str, records: list[EpisodeRecord]) -> Ack:
        """Apply one batch; appending an existing id is a no-op, bad episodes fail alone.

        Each episode is checked against ``aeterna_shared.limits`` (what the edge
        accepted passes): one that central cannot store becomes an ``ItemFailure``
        with reason ``INVALID_ITEM`` naming the field, and the rest is applied.
        """
        failures: list[ItemFailure] = []
        good: dict[str, EpisodeRecord] = {}
        for index, record in enumerate(records):
            problem = None
            if record.problem:
                problem = (limits.ITEM_FAILURE_REASON, record.problem)
            elif not record.episode_id or record.occur_time is None:
                problem = ("INVALID_EPISODE", "episode_id and occur_time are required")
            elif record.claimed_tenant_id and record.claimed_tenant_id != tenant_id:
                problem = ("TENANT_MISMATCH", "episode names another tenant")
            elif record.embedding and (why := embedding_problem(record.embedding, self._dimension)):
                problem = ("BAD_VECTOR", f"embedding {why}")
            elif invalid := limits.problem_of(
                limits.validate_episode,
                episode_id=record.episode_id,
                session_id=record.session_id,
                content=record.content,
                embedding=record.embedding,
                metadata=record.metadata,
                field=f"episodes[{index}]",
            ):
                # What PostgreSQL could not hold fails alone, before it could fail the whole batch.
                problem = (limits.ITEM_FAILURE_REASON, invalid)
            if problem is not None:
                failures.append(ItemFailure(record.episode_id, *problem))
            else:
                good.setdefault(record.episode_id, record)

        async def apply(transaction: Transaction) -> Applied:
            if good:
                await self._store.insert(transaction, tenant_id, list(good.values()))
            return Applied(len(records) - len(failures), tuple(failures))

        return await self._ledger.run(meta, tenant_id, apply)

    async def page(self, query: EpisodeFilter, after: tuple[datetime, str] | None, limit: int) -> list[EpisodeRow]:
        """One page, oldest first."""
        return await self._store.page(query, after, limit)
