"""The batch ledger: at-most-once application of batches, checkpoints and the edge registry's sync time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from central_svc.batches import Ack, BatchMeta, ItemFailure, advance_checkpoint, make_ack, reused_batch_id
from central_svc.store.database import Database

Connection = AsyncConnection[tuple[Any, ...]]

ApplyResult = tuple[int, list[ItemFailure], dict[str, object]]
"""What applying a batch's items returns: how many were applied, the failures, channel-specific extras."""

Apply = Callable[[Connection], Awaitable[ApplyResult]]


class BatchLedger:
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
                "INSERT INTO sync_batches (batch_id, agent_id, channel, sequence, digest) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
                (meta.batch_id, meta.agent_id, int(meta.channel), meta.sequence, meta.digest),
            )
            if await cursor.fetchone() is None:
                return await self._duplicate(connection, meta)
            applied, failures, extra = await apply(connection)
            checkpoint = await self._advance(connection, meta)
            await self.touch_edge(connection, meta.agent_id, tenant_id, meta.region, synced=True)
            ack = make_ack(meta, applied, failures, checkpoint)
            if extra:
                ack = Ack(**{**ack.__dict__, "extra": extra})
            await connection.execute(
                "UPDATE sync_batches SET ack = %s WHERE batch_id = %s", (ack.to_bytes(), meta.batch_id)
            )
            return ack

    async def _duplicate(self, connection: Connection, meta: BatchMeta) -> Ack:
        cursor = await connection.execute(
            "SELECT b.digest, b.ack, b.agent_id, c.contiguous FROM sync_batches b"
            " LEFT JOIN sync_checkpoints c ON c.agent_id = b.agent_id AND c.channel = b.channel"
            " WHERE b.batch_id = %s",
            (meta.batch_id,),
        )
        row = await cursor.fetchone()
        if row is None or bytes(row[0]) != meta.digest or row[2] != meta.agent_id or row[1] is None:
            raise reused_batch_id(meta)
        return Ack.from_bytes(bytes(row[1])).as_duplicate(int(row[3] or 0))

    async def _advance(self, connection: Connection, meta: BatchMeta) -> int:
        await connection.execute(
            "INSERT INTO sync_checkpoints (agent_id, channel) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (meta.agent_id, int(meta.channel)),
        )
        cursor = await connection.execute(
            "SELECT contiguous, applied_above FROM sync_checkpoints WHERE agent_id = %s AND channel = %s FOR UPDATE",
            (meta.agent_id, int(meta.channel)),
        )
        row = await cursor.fetchone()
        assert row is not None  # inserted just above
        contiguous, above = advance_checkpoint(int(row[0]), row[1], meta.sequence, meta.floor_sequence)
        await connection.execute(
            "UPDATE sync_checkpoints SET contiguous = %s, applied_above = %s, updated_at = now()"
            " WHERE agent_id = %s AND channel = %s",
            (contiguous, above, meta.agent_id, int(meta.channel)),
        )
        return contiguous

    @staticmethod
    async def touch_edge(connection: Connection, agent_id: str, tenant_id: str, region: str, *, synced: bool) -> None:
        """Record that an edge was heard from (and, when ``synced``, that a batch of it was applied)."""
        await connection.execute(
            "INSERT INTO edges AS e (agent_id, tenant_id, region, last_sync_at, last_seen_at)"
            " VALUES (%s, %s, %s, CASE WHEN %s THEN now() END, now())"
            " ON CONFLICT (agent_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
            " region = CASE WHEN EXCLUDED.region <> '' THEN EXCLUDED.region ELSE e.region END,"
            " last_sync_at = COALESCE(EXCLUDED.last_sync_at, e.last_sync_at), last_seen_at = now(),"
            " departed_at = NULL, departed_reason = ''",
            (agent_id, tenant_id, region, synced),
        )

    async def checkpoints(self, agent_id: str) -> dict[int, int]:
        """Channel -> contiguous checkpoint of ``agent_id``."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT channel, contiguous FROM sync_checkpoints WHERE agent_id = %s ORDER BY channel", (agent_id,)
            )
            return {int(channel): int(value) for channel, value in await cursor.fetchall()}
