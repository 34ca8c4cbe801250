"""PostgreSQL adapter of ``EpisodeStore`` plus the bulk export/import snapshots use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from central_svc.episodes import EpisodeFilter, EpisodeRecord, EpisodeRow
from central_svc.ports import Transaction
from central_svc.snapshots import SnapshotRow
from central_svc.store.database import Connection, Database, connection_of
from central_svc.store.vectors_pgvector import vector_literal

_INSERT = """
INSERT INTO episodes (episode_id, tenant_id, session_id, agent_id, content, embedding, occur_time, data)
SELECT u.id, u.tenant, u.session, u.agent, u.content, u.embedding::vector, u.t, u.data
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::bytea[])
     AS u (id, tenant, session, agent, content, embedding, t, data)
ON CONFLICT (episode_id) DO NOTHING
"""


class PostgresEpisodeStore:
    """Episodes in the ``episodes`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert(self, transaction: Transaction, tenant_id: str, rows: list[EpisodeRecord]) -> None:
        """Insert, skipping known ids."""
        await self.insert_rows(
            connection_of(transaction),
            [
                (
                    r.episode_id,
                    tenant_id,
                    r.session_id,
                    r.agent_id,
                    r.content,
                    vector_literal(r.embedding) if r.embedding else None,
                    r.occur_time,  # type: ignore[misc]  # validated as set before insertion
                    r.data,
                )
                for r in rows
            ],
        )

    @staticmethod
    async def insert_rows(connection: Connection, rows: list[SnapshotRow]) -> int:
        """Insert raw rows (also used by snapshot restore); return how many were new."""
        columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8
        cursor = await connection.execute(_INSERT, columns)
        return cursor.rowcount

    async def page(self, query: EpisodeFilter, after: tuple[datetime, str] | None, limit: int) -> list[EpisodeRow]:
        """Oldest first by (occur_time, episode_id)."""
        sql = "SELECT occur_time, episode_id, data FROM episodes WHERE tenant_id = %s"
        params: list[Any] = [query.tenant_id]
        for column, value in (("session_id", query.session_id), ("agent_id", query.agent_id)):
            if value:
                sql += f" AND {column} = %s"
                params.append(value)
        if query.start is not None:
            sql += " AND occur_time >= %s"
            params.append(query.start)
        if query.end is not None:
            sql += " AND occur_time < %s"
            params.append(query.end)
        if after is not None:
            sql += " AND (occur_time, episode_id) > (%s, %s)"
            params.extend(after)
        sql += " ORDER BY occur_time, episode_id LIMIT %s"
        params.append(limit)
        async with self._database.connection() as connection:
            cursor = await connection.execute(sql, params)
            return [EpisodeRow(row[0], row[1], bytes(row[2])) for row in await cursor.fetchall()]

    async def export(self) -> AsyncIterator[SnapshotRow]:
        """Every episode, in a stable order, streamed with a server-side cursor."""
        async with self._database.transaction() as connection, connection.cursor(name="episode_export") as cursor:
            await cursor.execute(
                "SELECT episode_id, tenant_id, session_id, agent_id, content, embedding::text, occur_time, data"
                " FROM episodes ORDER BY occur_time, episode_id"
            )
            async for row in cursor:
                yield (row[0], row[1], row[2], row[3], row[4], row[5], row[6], bytes(row[7]))

    async def import_rows(self, rows: list[SnapshotRow]) -> int:
        """Insert a chunk of snapshot rows in one transaction; return how many were new."""
        async with self._database.transaction() as connection:
            return await self.insert_rows(connection, rows)
