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

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import AsyncCursor

from central_svc.batches import Ack, BatchMeta, Channel, advance_checkpoint, make_ack, reused_batch_id
from central_svc.ports import Apply
from central_svc.store.database import Connection, Database

Cursor = AsyncCursor[tuple[Any, ...]]

_log = logging.getLogger(__name__)


def _shown(incarnation_id: str) -> str:
    return incarnation_id or "(none)"


class PostgresBatchLedger:
    """Runs a batch's item writes and its bookkeeping in one transaction."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def run(self, meta: BatchMeta, tenant_id: str, apply: Apply, *, pipelined: bool = False) -> Ack:
        """Apply the batch once; a resend with the same content gets the stored ack as DUPLICATE.

        The ledger row is inserted first: a concurrent resend of the same batch
        blocks on the primary key until this transaction ends, then sees it.

        ``pipelined``: the transaction runs in psycopg's pipeline mode, and the
        bookkeeping statements (checkpoint row, edge registry, incarnation) are
        sent before ``apply`` runs, so they travel with the item writes: three
        round trips for a batch of whole sessions (``BEGIN`` and the ledger row;
        bookkeeping and items; the last updates and ``COMMIT``) instead of ten.
        The batch then locks its checkpoint and edge rows before its items (the
        same order in every pipelined batch, so no deadlock; an agent's pipelined
        batches on two channels run one after the other). Only for an ``apply``
        that reads every result it relies on (``rowcount`` is not known before
        the next read) and does no I/O besides its statements.
        """
        async with (
            self._database.connection() as connection,
            connection.pipeline() if pipelined else contextlib.nullcontext(),
            connection.transaction(),
        ):
            cursor = await connection.execute(
                "INSERT INTO sync_batches (batch_id, agent_id, incarnation_id, channel, sequence, digest)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
                (meta.batch_id, meta.agent_id, meta.incarnation_id, int(meta.channel), meta.sequence, meta.digest),
            )
            if await cursor.fetchone() is None:
                return await self._duplicate(connection, meta)
            if pipelined:
                bookkeeping = await _send_bookkeeping(connection, meta, tenant_id)
                applied = await apply(connection)
            else:
                applied = await apply(connection)
                bookkeeping = await _send_bookkeeping(connection, meta, tenant_id)
            held, touched, counted = bookkeeping
            row = await held.fetchone()
            assert row is not None  # inserted just before
            contiguous, above = advance_checkpoint(int(row[0]), row[1], meta.sequence, meta.floor_sequence)
            await connection.execute(
                "UPDATE sync_checkpoints SET contiguous = %s, applied_above = %s, updated_at = now()"
                " WHERE agent_id = %s AND incarnation_id = %s AND channel = %s",
                (contiguous, above, meta.agent_id, meta.incarnation_id, int(meta.channel)),
            )
            edge = await touched.fetchone()
            batches = await counted.fetchone()
            assert batches is not None  # an upsert always returns its row
            current = str(edge[0]) if edge is not None else ""
            change = await self._track_incarnation(connection, meta, current, int(batches[0]))
            ack = make_ack(meta, applied.count, applied.failures, contiguous, applied.results)
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

    async def _track_incarnation(
        self, connection: Connection, meta: BatchMeta, current: str, batches: int
    ) -> Callable[[], None] | None:
        """A new incarnation (``batches``, its count of batches, is 1) becomes the edge's current incarnation.

        Returns what to log once the transaction committed (a new or an earlier incarnation), or None.
        The edge's registry row is locked by ``_touch_edge`` already (``run`` sends it before the
        ``edge_incarnations`` upsert), so two first batches of new incarnations of one agent id are
        registered one after the other.
        """
        agent, incarnation = meta.agent_id, meta.incarnation_id
        if batches > 1:
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

    async def checkpoints(self, agent_id: str, incarnation_id: str = "") -> dict[int, int]:
        """Channel -> contiguous checkpoint of ``agent_id``'s incarnation ``incarnation_id``."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT channel, contiguous FROM sync_checkpoints WHERE agent_id = %s AND incarnation_id = %s"
                " ORDER BY channel",
                (agent_id, incarnation_id),
            )
            return {int(channel): int(value) for channel, value in await cursor.fetchall()}

    async def stored_acks(
        self, agent_id: str, incarnation_id: str, batch_ids: Sequence[str]
    ) -> list[tuple[Channel, Ack]]:
        """The stored acks (as DUPLICATE, with the channel's checkpoint now) of the named batches applied."""
        if not batch_ids:
            return []
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT b.batch_id, b.channel, b.ack, c.contiguous FROM sync_batches b"
                " LEFT JOIN sync_checkpoints c ON c.agent_id = b.agent_id AND c.incarnation_id = b.incarnation_id"
                " AND c.channel = b.channel"
                " WHERE b.batch_id = ANY(%s) AND b.agent_id = %s AND b.incarnation_id = %s AND b.ack IS NOT NULL",
                (list(batch_ids), agent_id, incarnation_id),
            )
            found = {
                str(batch_id): (Channel(channel), Ack.from_bytes(bytes(ack)).as_duplicate(int(checkpoint or 0)))
                for batch_id, channel, ack, checkpoint in await cursor.fetchall()
            }
        return [found[batch_id] for batch_id in dict.fromkeys(batch_ids) if batch_id in found]


def _touch_edge(agent_id: str, tenant_id: str, region: str, *, synced: bool) -> tuple[str, tuple[object, ...]]:
    """Record that an edge was heard from (and, when ``synced``, that a batch of it was applied).

    The statement returns the edge's current incarnation id as registered before it ran.
    """
    return (
        "INSERT INTO edges AS e (agent_id, tenant_id, region, last_sync_at, last_seen_at)"
        " VALUES (%s, %s, %s, CASE WHEN %s THEN now() END, now())"
        " ON CONFLICT (agent_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
        " region = CASE WHEN EXCLUDED.region <> '' THEN EXCLUDED.region ELSE e.region END,"
        " last_sync_at = COALESCE(EXCLUDED.last_sync_at, e.last_sync_at), last_seen_at = now(),"
        " departed_at = NULL, departed_reason = ''"
        " RETURNING e.incarnation_id",
        (agent_id, tenant_id, region, synced),
    )


async def _send_bookkeeping(connection: Connection, meta: BatchMeta, tenant_id: str) -> tuple[Cursor, Cursor, Cursor]:
    """Send the batch's bookkeeping statements; their results (checkpoint row, edge, incarnation) are read later.

    In this order: the checkpoint row (created if new, then locked), the edge's
    registry row, then the incarnation's count (see ``_track_incarnation``).
    """
    key = (meta.agent_id, meta.incarnation_id, int(meta.channel))
    await connection.execute(
        "INSERT INTO sync_checkpoints (agent_id, incarnation_id, channel) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        key,
    )
    held = await connection.execute(
        "SELECT contiguous, applied_above FROM sync_checkpoints"
        " WHERE agent_id = %s AND incarnation_id = %s AND channel = %s FOR UPDATE",
        key,
    )
    touched = await connection.execute(*_touch_edge(meta.agent_id, tenant_id, meta.region, synced=True))
    counted = await connection.execute(
        "INSERT INTO edge_incarnations AS i (agent_id, incarnation_id) VALUES (%s, %s)"
        " ON CONFLICT (agent_id, incarnation_id) DO UPDATE SET last_seen_at = now(), batches = i.batches + 1"
        " RETURNING i.batches",
        (meta.agent_id, meta.incarnation_id),
    )
    return held, touched, counted
