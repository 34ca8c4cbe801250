"""The ingest gate: how many batches one central writes at once, and what a batch that gets no turn soon is told.

Every batch (sessions, vectors, episodes, decisions) is written by the ledger
in one transaction on one pooled PostgreSQL connection. Without a bound, a
replica with 10,000 edge streams had a batch of each stream waiting on the
pool at once: all of them held in memory, the readiness probe starved, and
after psycopg_pool's 30 s wait each was answered UNAVAILABLE "central's
database is unreachable", although PostgreSQL was idle and central merely
busy (docs/performance.md, "Capacity").

``IngestGate`` wraps the ledger (it is a ``BatchLedger`` itself, so the
domain modules do not know it is there). At most ``concurrency`` batches are
written at once (``sync.ingestConcurrency``, by default ``postgresql.poolSize``:
more could only queue on the pool); later ones wait for a turn in arrival
order, at most ``wait`` (``sync.ingestWait``). A batch that got no turn by then
was not written, and is answered RESOURCE_EXHAUSTED, reason ``INGEST_BUSY``,
with a RetryInfo of one to two waits (jittered, so that the edges told at the
same moment do not come back together). The edge keeps the batch and sends it
again after that delay; a resend of a batch that was in fact written is a
DUPLICATE in the ledger, so nothing is lost or applied twice.

What the gate counts (``in_flight``, ``waiting``, ``refused``) is exported
by ``central_svc.metrics`` so that shed load is visible to an operator.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from aeterna_shared.errors import ResourceExhausted
from central_svc.batches import Ack, BatchMeta, Channel
from central_svc.ports import Apply, BatchLedger

BUSY_REASON = "INGEST_BUSY"
"""``ErrorInfo.reason`` of a batch refused because central had no turn for it within ``sync.ingestWait``."""


class IngestGate:
    """A ``BatchLedger`` that runs at most ``concurrency`` batches of ``ledger`` at once."""

    def __init__(self, ledger: BatchLedger, *, concurrency: int, wait: float) -> None:
        if concurrency < 1 or wait <= 0:
            raise ValueError(f"an ingest gate needs concurrency >= 1 and wait > 0, got {concurrency} and {wait}")
        self._ledger = ledger
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.wait = wait
        self.in_flight = 0
        """Batches being written now."""
        self.waiting = 0
        """Batches waiting for a turn now."""
        self.refused = 0
        """Batches answered ``INGEST_BUSY`` since start."""

    async def run(self, meta: BatchMeta, tenant_id: str, apply: Apply, *, pipelined: bool = False) -> Ack:
        """The ledger's ``run`` once a turn is free; ``ResourceExhausted`` (``INGEST_BUSY``) after ``wait`` without."""
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait)
        except TimeoutError:
            self.refused += 1
            # One fixed message (logs and clients group by it); the numbers are in the metrics.
            raise ResourceExhausted(
                "central had no write turn free within sync.ingestWait; this batch was not written, "
                "send it again after the RetryInfo delay",
                reason=BUSY_REASON,
                retry_after=round(self.wait * random.uniform(1.0, 2.0), 3),
                subject="sync.ingestConcurrency",
            ) from None
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            return await self._ledger.run(meta, tenant_id, apply, pipelined=pipelined)
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def checkpoints(self, agent_id: str, incarnation_id: str = "") -> dict[int, int]:
        """The ledger's checkpoints (a read, not gated)."""
        return await self._ledger.checkpoints(agent_id, incarnation_id)

    async def stored_acks(
        self, agent_id: str, incarnation_id: str, batch_ids: Sequence[str]
    ) -> list[tuple[Channel, Ack]]:
        """The ledger's stored acks (a read, not gated)."""
        return await self._ledger.stored_acks(agent_id, incarnation_id, batch_ids)
