"""PostgreSQL adapter of ``EpisodeStore`` plus the bulk export/import snapshots use.

Embeddings go in as float32 arrays in pgvector's binary form (see
``central_svc.store.vectors_pgvector``). A snapshot file keeps the text form
PostgreSQL prints (``embedding::text``, the shortest decimal that reads back
as the same float4), so files written before stay valid; restore parses it into
the same float32 array, exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import numpy as np

from aeterna_shared.errors import InvalidArgument
from central_svc.episodes import EpisodeFilter, EpisodeRecord, EpisodeRow
from central_svc.ports import Transaction
from central_svc.snapshots import SnapshotRow
from central_svc.store.database import Connection, Database, connection_of
from central_svc.store.vectors_pgvector import Embedding, embedding_param

_INSERT = """
INSERT INTO episodes (episode_id, tenant_id, session_id, agent_id, content, embedding, occur_time, data)
SELECT u.id, u.tenant, u.session, u.agent, u.content, u.embedding, u.t, u.data
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::vector[], %s::timestamptz[], %s::bytea[])
     AS u (id, tenant, session, agent, content, embedding, t, data)
ON CONFLICT (episode_id) DO NOTHING
"""


_Row = tuple[str, str, str, str, str, Embedding | None, datetime, bytes]


def embedding_from_text(text: str) -> Embedding:
    """PostgreSQL's text form of a ``vector`` (``[0.1,2,-3e-05]``) as the float32 array it denotes."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    try:
        return np.array(inner.split(",") if inner else [], dtype=np.float32)
    except ValueError:
        problem = f"a snapshot row's embedding is no vector: {text[:40]!r}"
        raise InvalidArgument(problem, reason="BAD_SNAPSHOT") from None


async def _insert(connection: Connection, rows: list[_Row]) -> int:
    columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8
    cursor = await connection.execute(_INSERT, columns)
    return cursor.rowcount


class PostgresEpisodeStore:
    """Episodes in the ``episodes`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert(self, transaction: Transaction, tenant_id: str, rows: list[EpisodeRecord]) -> None:
        """Insert, skipping known ids."""
        await _insert(
            connection_of(transaction),
            [
                (
                    r.episode_id,
                    tenant_id,
                    r.session_id,
                    r.agent_id,
                    r.content,
                    embedding_param(r.embedding) if r.embedding else None,
                    r.occur_time,  # type: ignore[misc]  # validated as set before insertion
                    r.data,
                )
                for r in rows
            ],
        )

    @staticmethod
    async def insert_rows(connection: Connection, rows: list[SnapshotRow]) -> int:
        """Insert snapshot rows (embeddings in PostgreSQL's text form); return how many were new."""
        return await _insert(
            connection,
            [(*row[:5], embedding_from_text(row[5]) if row[5] else None, *row[6:]) for row in rows],
        )

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
