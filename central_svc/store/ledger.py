"""PostgreSQL adapter of the ``BatchLedger`` port.

At-most-once application of batches, checkpoints and the edge registry's sync time.

Sequences and checkpoints count per (agent id, incarnation, channel). An
incarnation is the identity of an edge's local state (``BatchHeader.
incarnation_id``, a UUID its outbox makes when its data directory is created):
an edge restarted on an empty data directory with the same agent id starts
again at sequence 1 as a new incarnation, with checkpoints of its own, so its
batches are never taken for ones already applied. Central logs a WARNING the
first time an agent id shows up with a new incarnation, and the edge registry
records the newest incarnation, when it started and how many were seen.

Batches of a previous incarnation that still arrive (an old copy of the edge
still running, or an outbox restored from a backup) are applied under that
incarnation's own checkpoint — nothing is dropped — with a WARNING; they do
not make it the current incarnation again. Item writes stay idempotent by the
items' own ids, so an item sent by two incarnations is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from central_svc.batches import Ack, BatchMeta, advance_checkpoint, make_ack, reused_batch_id
from central_svc.ports import Apply
from central_svc.store.database import Connection, Database

_log = logging.getLogger(__name__)


def _shown(incarnation_id: str) -> str:
    return incarnation_id or "(none)"


class PostgresBatchLedger:
    """Runs a batch's item writes and its bookkeeping in one transaction."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def run(self, meta: BatchMeta, tenant_id: str, apply: Apply) -> Ack:
        """Apply the batch once; a resend with the same content gets the stored ack as DUPLICATE.

        The ledger row is inserted first: a concurrent resend of the same batch
        blocks on the primary key until this transaction ends, then sees it.
        """
        async with self._database.transaction() as connection:
            cursor = await connection.execute(
                "INSERT INTO sync_batches (batch_id, agent_id, incarnation_id, channel, sequence, digest)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
                (meta.batch_id, meta.agent_id, meta.incarnation_id, int(meta.channel), meta.sequence, meta.digest),
            )
            if await cursor.fetchone() is None:
                return await self._duplicate(connection, meta)
            applied = await apply(connection)
            checkpoint = await self._advance(connection, meta)
            current = await self.touch_edge(connection, meta.agent_id, tenant_id, meta.region, synced=True)
            change = await self._track_incarnation(connection, meta, current)
            ack = make_ack(meta, applied.count, applied.failures, checkpoint, applied.results)
            await connection.execute(
                "UPDATE sync_batches SET ack = %s WHERE batch_id = %s", (ack.to_bytes(), meta.batch_id)
            )
        if change is not None:
            change()  # logged once the batch is committed
        return ack

    async def _duplicate(self, connection: Connection, meta: BatchMeta) -> Ack:
        cursor = await connection.execute(
            "SELECT b.digest, b.ack, b.agent_id, c.contiguous, b.incarnation_id FROM sync_batches b"
            " LEFT JOIN sync_checkpoints c ON c.agent_id = b.agent_id AND c.incarnation_id = b.incarnation_id"
            " AND c.channel = b.channel WHERE b.batch_id = %s",
            (meta.batch_id,),
        )
        row = await cursor.fetchone()
        if (
            row is None
            or bytes(row[0]) != meta.digest
            or row[2] != meta.agent_id
            or row[4] != meta.incarnation_id
            or row[1] is None
        ):
            raise reused_batch_id(meta)
        return Ack.from_bytes(bytes(row[1])).as_duplicate(int(row[3] or 0))

    async def _advance(self, connection: Connection, meta: BatchMeta) -> int:
        key = (meta.agent_id, meta.incarnation_id, int(meta.channel))
        await connection.execute(
            "INSERT INTO sync_checkpoints (agent_id, incarnation_id, channel) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            key,
        )
        cursor = await connection.execute(
            "SELECT contiguous, applied_above FROM sync_checkpoints"
            " WHERE agent_id = %s AND incarnation_id = %s AND channel = %s FOR UPDATE",
            key,
        )
        row = await cursor.fetchone()
        assert row is not None  # inserted just above
        contiguous, above = advance_checkpoint(int(row[0]), row[1], meta.sequence, meta.floor_sequence)
        await connection.execute(
            "UPDATE sync_checkpoints SET contiguous = %s, applied_above = %s, updated_at = now()"
            " WHERE agent_id = %s AND incarnation_id = %s AND channel = %s",
            (contiguous, above, *key),
        )
        return contiguous

    async def _track_incarnation(
        self, connection: Connection, meta: BatchMeta, current: str
    ) -> Callable[[], None] | None:
        """Count the batch under its incarnation; a new one becomes the edge's current incarnation.

        Returns what to log once the transaction committed (a new or an earlier incarnation), or None.
        The edge's registry row is locked by ``touch_edge`` already, so two first batches of new
        incarnations of one agent id are registered one after the other.
        """
        cursor = await connection.execute(
            "INSERT INTO edge_incarnations AS i (agent_id, incarnation_id) VALUES (%s, %s)"
            " ON CONFLICT (agent_id, incarnation_id) DO UPDATE SET last_seen_at = now(), batches = i.batches + 1"
            " RETURNING i.batches",
            (meta.agent_id, meta.incarnation_id),
        )
        row = await cursor.fetchone()
        assert row is not None  # an upsert always returns its row
        agent, incarnation = meta.agent_id, meta.incarnation_id
        if int(row[0]) > 1:
            if incarnation == current:
                return None
            return lambda: _log.warning(
                "edge %s: batch %s (%s, sequence %d) comes from its earlier incarnation %s, not the current %s; "
                "applied under that incarnation's own checkpoint. Is an old copy of the edge still running?",
                agent,
                meta.batch_id,
                meta.channel.name.lower(),
                meta.sequence,
                _shown(incarnation),
                _shown(current),
            )
        cursor = await connection.execute(
            "UPDATE edges SET incarnation_id = %s, incarnation_started_at = now(),"
            " incarnation_count = (SELECT count(*) FROM edge_incarnations WHERE agent_id = %s)"
            " WHERE agent_id = %s RETURNING incarnation_count",
            (incarnation, agent, agent),
        )
        counted = await cursor.fetchone()
        if counted is None or int(counted[0]) <= 1:
            return None  # the first incarnation central sees of this agent id
        return lambda: _log.warning(
            "edge %s was re-provisioned: incarnation %s -> %s; its checkpoints start afresh",
            agent,
            _shown(current),
            _shown(incarnation),
        )

    @staticmethod
    async def touch_edge(connection: Connection, agent_id: str, tenant_id: str, region: str, *, synced: bool) -> str:
        """Record that an edge was heard from (and, when ``synced``, that a batch of it was applied).

        Returns the edge's current incarnation id as registered before this call.
        """
        cursor = await connection.execute(
            "INSERT INTO edges AS e (agent_id, tenant_id, region, last_sync_at, last_seen_at)"
            " VALUES (%s, %s, %s, CASE WHEN %s THEN now() END, now())"
            " ON CONFLICT (agent_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
            " region = CASE WHEN EXCLUDED.region <> '' THEN EXCLUDED.region ELSE e.region END,"
            " last_sync_at = COALESCE(EXCLUDED.last_sync_at, e.last_sync_at), last_seen_at = now(),"
            " departed_at = NULL, departed_reason = ''"
            " RETURNING e.incarnation_id",
            (agent_id, tenant_id, region, synced),
        )
        row = await cursor.fetchone()
        return str(row[0]) if row is not None else ""

    async def checkpoints(self, agent_id: str, incarnation_id: str = "") -> dict[int, int]:
        """Channel -> contiguous checkpoint of ``agent_id``'s incarnation ``incarnation_id``."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT channel, contiguous FROM sync_checkpoints WHERE agent_id = %s AND incarnation_id = %s"
                " ORDER BY channel",
                (agent_id, incarnation_id),
            )
            return {int(channel): int(value) for channel, value in await cursor.fetchall()}
