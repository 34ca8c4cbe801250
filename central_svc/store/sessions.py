"""PostgreSQL adapter of ``SessionStore``: one ``INSERT ... SELECT FROM unnest(...)`` per batch.

Sending the batch as column arrays makes the whole upsert one statement and
one round trip, which measured faster than executemany in pipeline mode
(see ``bench/central_bench.py``).
"""

from __future__ import annotations

from central_svc.sessions import SessionRecord, StoredSession
from central_svc.store.database import Database
from central_svc.store.ledger import Connection

UPSERT = """
INSERT INTO session_memory AS s (session_id, tenant_id, agent_id, user_id, data, last_activity, checksum, synced_at)
SELECT u.session_id, %(tenant)s, %(agent)s, u.user_id, u.data, u.last_activity, u.checksum, now()
FROM unnest(%(ids)s::text[], %(users)s::text[], %(data)s::bytea[], %(times)s::timestamptz[], %(sums)s::text[])
     AS u (session_id, user_id, data, last_activity, checksum)
ON CONFLICT (session_id) DO UPDATE SET
    agent_id = EXCLUDED.agent_id, user_id = EXCLUDED.user_id, data = EXCLUDED.data,
    last_activity = EXCLUDED.last_activity, checksum = EXCLUDED.checksum, synced_at = now()
WHERE s.tenant_id = EXCLUDED.tenant_id AND s.last_activity < EXCLUDED.last_activity
RETURNING s.session_id
"""
"""The upsert: newer last_activity wins; another tenant's row is never touched."""


class PostgresSessionStore:
    """Sessions in the ``session_memory`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def upsert(
        self, connection: Connection, tenant_id: str, agent_id: str, rows: list[SessionRecord]
    ) -> set[str]:
        """Upsert ``rows`` in one statement; return the ids actually written."""
        cursor = await connection.execute(
            UPSERT,
            {
                "tenant": tenant_id,
                "agent": agent_id,
                "ids": [row.session_id for row in rows],
                "users": [row.user_id for row in rows],
                "data": [row.data for row in rows],
                "times": [row.last_activity for row in rows],
                "sums": [row.checksum for row in rows],
            },
        )
        return {str(row[0]) for row in await cursor.fetchall()}

    async def foreign(self, connection: Connection, tenant_id: str, session_ids: list[str]) -> set[str]:
        """Ids among ``session_ids`` owned by another tenant."""
        cursor = await connection.execute(
            "SELECT session_id FROM session_memory WHERE session_id = ANY(%s) AND tenant_id <> %s",
            (session_ids, tenant_id),
        )
        return {str(row[0]) for row in await cursor.fetchall()}

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
