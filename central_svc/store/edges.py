"""PostgreSQL adapter of ``EdgeStore``."""

from __future__ import annotations

from typing import Any

from central_svc.edges import EdgeRow
from central_svc.store.database import Database


class PostgresEdgeStore:
    """The ``edges`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def depart(self, agent_id: str, tenant_id: str, reason: str) -> None:
        """Upsert the row as departed now."""
        async with self._database.connection() as connection:
            await connection.execute(
                "INSERT INTO edges (agent_id, tenant_id, departed_at, departed_reason) VALUES (%s, %s, now(), %s)"
                " ON CONFLICT (agent_id) DO UPDATE SET departed_at = now(), departed_reason = EXCLUDED.departed_reason,"
                " last_seen_at = now()",
                (agent_id, tenant_id, reason),
            )

    async def page(self, tenant_id: str | None, after: str, limit: int) -> list[EdgeRow]:
        """Rows by agent id."""
        sql = (
            "SELECT agent_id, tenant_id, region, last_sync_at, last_seen_at, departed_at,"
            " incarnation_id, incarnation_started_at, incarnation_count FROM edges WHERE agent_id > %s"
        )
        params: list[Any] = [after]
        if tenant_id is not None:
            sql += " AND tenant_id = %s"
            params.append(tenant_id)
        sql += " ORDER BY agent_id LIMIT %s"
        params.append(limit)
        async with self._database.connection() as connection:
            cursor = await connection.execute(sql, params)
            return [EdgeRow(*row) for row in await cursor.fetchall()]
