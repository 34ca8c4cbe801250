"""PostgreSQL adapter of ``SessionStore``: one ``INSERT ... SELECT FROM unnest(...)`` per batch for whole sessions,
row locks and one ``UPDATE ... FROM unnest(...)`` for merged appends.

Sending the batch as column arrays makes the whole upsert one statement. The
bench (``bench/raw_pg.py``) times it against ``COPY`` into a staging table
plus one merge, and executemany in pipeline mode: at batches of 100 sessions
it is the fastest of the three, and it returns the written ids directly. The
arrays go in PostgreSQL's binary format (``%b``): as text, ``bytea`` travels
hex-encoded and the server parses every array literal, which cost half of the
statement's time.

The ledger runs these statements in pipeline mode (``BatchLedger.run(...,
pipelined=True)``): each method sends all its statements before it reads the
first result, so that one method costs one round trip.
"""

from __future__ import annotations

from central_svc.ports import Transaction
from central_svc.sessions import HeldSession, MergedSession, SessionRecord, StoredSession, Upserted
from central_svc.store.database import Database, connection_of

UPSERT = """
INSERT INTO session_memory AS s (session_id, tenant_id, agent_id, user_id, data, last_activity, checksum, synced_at)
SELECT u.session_id, %(tenant)s, %(agent)s, u.user_id, u.data, u.last_activity, u.checksum, now()
FROM unnest(%(ids)b::text[], %(users)b::text[], %(data)b::bytea[], %(times)b::timestamptz[], %(sums)b::text[])
     AS u (session_id, user_id, data, last_activity, checksum)
ON CONFLICT (session_id) DO UPDATE SET
    agent_id = EXCLUDED.agent_id, user_id = EXCLUDED.user_id, data = EXCLUDED.data,
    last_activity = EXCLUDED.last_activity, checksum = EXCLUDED.checksum, synced_at = now()
WHERE s.tenant_id = EXCLUDED.tenant_id AND s.last_activity < EXCLUDED.last_activity
RETURNING s.session_id
"""
"""The upsert: newer last_activity wins; another tenant's row is never touched."""


CREATE_MISSING = """
INSERT INTO session_memory (session_id, tenant_id, agent_id, data, last_activity, checksum)
SELECT id, %(tenant)s, %(agent)s, ''::bytea, 'epoch'::timestamptz, '' FROM unnest(%(ids)b::text[]) AS id ORDER BY id
ON CONFLICT (session_id) DO NOTHING
RETURNING session_id
"""
"""Empty rows for sessions an append starts, so that every merge target exists and can be locked."""

FOREIGN = "SELECT session_id FROM session_memory WHERE session_id = ANY(%b::text[]) AND tenant_id <> %s"
"""Which of the ids belong to another tenant."""

LOCK = """
SELECT session_id, tenant_id, data FROM session_memory WHERE session_id = ANY(%b::text[]) ORDER BY session_id FOR UPDATE
"""
"""Rows locked in id order, so that two transactions merging overlapping sessions cannot deadlock."""

WRITE_MERGED = """
UPDATE session_memory AS s SET agent_id = %(agent)s, user_id = u.user_id, data = u.data,
    last_activity = u.last_activity, checksum = u.checksum, synced_at = now()
FROM unnest(%(ids)b::text[], %(users)b::text[], %(data)b::bytea[], %(times)b::timestamptz[], %(sums)b::text[])
     AS u (session_id, user_id, data, last_activity, checksum)
WHERE s.session_id = u.session_id
"""


class PostgresSessionStore:
    """Sessions in the ``session_memory`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def upsert(
        self, transaction: Transaction, tenant_id: str, agent_id: str, rows: list[SessionRecord]
    ) -> Upserted:
        """Upsert ``rows`` in one statement; the ids written, and those another tenant owns (one round trip)."""
        connection = connection_of(transaction)
        ids = [row.session_id for row in rows]
        written = await connection.execute(
            UPSERT,
            {
                "tenant": tenant_id,
                "agent": agent_id,
                "ids": ids,
                "users": [row.user_id for row in rows],
                "data": [row.data for row in rows],
                "times": [row.last_activity for row in rows],
                "sums": [row.checksum for row in rows],
            },
        )
        # Sent before the upsert's result is read. A row this upsert wrote is the caller's tenant's,
        # so the foreign ids are exactly the foreign ones among those not written.
        foreign = await connection.execute(FOREIGN, (ids, tenant_id))
        return Upserted(
            written={str(row[0]) for row in await written.fetchall()},
            foreign={str(row[0]) for row in await foreign.fetchall()},
        )

    async def lock_for_merge(
        self, transaction: Transaction, tenant_id: str, agent_id: str, session_ids: list[str]
    ) -> dict[str, HeldSession]:
        """Create missing rows (empty, the caller's tenant), then lock all of them in id order."""
        connection = connection_of(transaction)
        creating = await connection.execute(
            CREATE_MISSING, {"tenant": tenant_id, "agent": agent_id, "ids": session_ids}
        )
        locking = await connection.execute(LOCK, (session_ids,))  # sent before the first result is read
        created = {str(row[0]) for row in await creating.fetchall()}
        return {
            str(sid): HeldSession(str(tenant), None if sid in created else bytes(data))
            for sid, tenant, data in await locking.fetchall()
        }

    async def write_merged(self, transaction: Transaction, agent_id: str, merged: dict[str, MergedSession]) -> None:
        """One UPDATE for every merged session of the batch."""
        await connection_of(transaction).execute(
            WRITE_MERGED,
            {
                "agent": agent_id,
                "ids": list(merged),
                "users": [m.user_id for m in merged.values()],
                "data": [m.data for m in merged.values()],
                "times": [m.last_activity for m in merged.values()],
                "sums": [m.checksum for m in merged.values()],
            },
        )

    async def get(self, tenant_id: str, session_id: str) -> StoredSession | None:
        """One session of the tenant."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT data, agent_id, synced_at FROM session_memory WHERE session_id = %s AND tenant_id = %s",
                (session_id, tenant_id),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return StoredSession(data=bytes(row[0]), agent_id=str(row[1]), synced_at=row[2])
