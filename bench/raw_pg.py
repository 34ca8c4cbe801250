"""The limits of the central figures: the same rows written by each raw PostgreSQL method, the fastest one wins.

A ratio against one raw method says little when another method would have
been faster, so ``session_sync`` and ``replay`` time every way psycopg can
write a batch, for the same rows into the same table, one transaction per
batch, and take the fastest as their limit (all three are printed):

* ``copy``: ``COPY ... FROM STDIN`` (binary) into a temporary staging table,
  then one ``INSERT ... SELECT ... ON CONFLICT`` merge from it;
* ``unnest``: one ``INSERT ... SELECT FROM unnest(<column arrays>) ON CONFLICT``;
* ``executemany``: the one-row ``INSERT ... ON CONFLICT`` for each row, sent
  by psycopg 3 in pipeline mode (one round trip for the batch).

Parameters travel in PostgreSQL's binary format (``%b``): text arrays in text
format cost the server a parse of the array literal, which measured up to
twice the time of the whole unnest insert.

Sessions merge as central merges them (the newer ``last_activity`` wins, no
other tenant's row is touched); decisions go into the ``decisions`` log
itself, with the statuses central gives them, ``ON CONFLICT DO NOTHING``.
Nothing here validates, verifies, parses protobuf or keeps a ledger: that is
what the figures add, and what their ratios measure.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from central_svc.store.urls import psycopg_conninfo

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]
Method = Callable[[Connection, Sequence[Row]], Awaitable[None]]

METHODS = ("copy", "unnest", "executemany")
"""The raw methods, in the order they are printed."""


# --- sessions: (session_id, user_id, data, last_activity, checksum); tenant and agent are constants ---------------

TENANT = "default"

_SESSION_MERGE = """
ON CONFLICT (session_id) DO UPDATE SET
    agent_id = EXCLUDED.agent_id, user_id = EXCLUDED.user_id, data = EXCLUDED.data,
    last_activity = EXCLUDED.last_activity, checksum = EXCLUDED.checksum, synced_at = now()
WHERE s.tenant_id = EXCLUDED.tenant_id AND s.last_activity < EXCLUDED.last_activity
"""
_SESSION_COLUMNS = "session_id, tenant_id, agent_id, user_id, data, last_activity, checksum, synced_at"


def _session_methods(agent: str) -> dict[str, Method]:
    async def copy(connection: Connection, rows: Sequence[Row]) -> None:
        async with connection.cursor() as cursor:
            async with cursor.copy("COPY bench_session_stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "bytea", "timestamptz", "text"])
                for row in rows:
                    await copy.write_row(row)
            await cursor.execute(
                f"INSERT INTO session_memory AS s ({_SESSION_COLUMNS})"
                " SELECT session_id, %s, %s, user_id, data, last_activity, checksum, now() FROM bench_session_stage"
                + _SESSION_MERGE,
                (TENANT, agent),
            )

    async def unnest(connection: Connection, rows: Sequence[Row]) -> None:
        ids, users, data, times, sums = (list(column) for column in zip(*rows, strict=True))
        await connection.execute(
            f"INSERT INTO session_memory AS s ({_SESSION_COLUMNS})"
            " SELECT u.session_id, %b, %b, u.user_id, u.data, u.last_activity, u.checksum, now()"
            " FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::timestamptz[], %b::text[])"
            " AS u (session_id, user_id, data, last_activity, checksum)" + _SESSION_MERGE,
            (TENANT, agent, ids, users, data, times, sums),
        )

    async def executemany(connection: Connection, rows: Sequence[Row]) -> None:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO session_memory AS s ({_SESSION_COLUMNS})"
                " VALUES (%b, %b, %b, %b, %b, %b, %b, now())" + _SESSION_MERGE,
                [(r[0], TENANT, agent, r[1], r[2], r[3], r[4]) for r in rows],
            )

    return {"copy": copy, "unnest": unnest, "executemany": executemany}


async def session_limits(url: str, agent: str, rows: Sequence[Row], batch: int) -> dict[str, float]:
    """Rows/s of each method, each into an empty ``session_memory`` (emptied again afterwards)."""
    async with await psycopg.AsyncConnection.connect(psycopg_conninfo(url), autocommit=True) as connection:
        await connection.execute(
            "CREATE TEMP TABLE bench_session_stage (session_id text, user_id text, data bytea,"
            " last_activity timestamptz, checksum text) ON COMMIT DELETE ROWS"
        )
        rates = {}
        for name, method in _session_methods(agent).items():
            await connection.execute("TRUNCATE session_memory")
            rates[name] = await _timed(connection, method, rows, batch)
        await connection.execute("TRUNCATE session_memory")
    return rates


# --- decisions: (decision_id, resource, decide_time, status, data); tenant and agent are constants ---------------

_DECISION_COLUMNS = "decision_id, tenant_id, agent_id, resource, decide_time, status, data"


def _decision_methods(agent: str) -> dict[str, Method]:
    async def copy(connection: Connection, rows: Sequence[Row]) -> None:
        async with connection.cursor() as cursor:
            async with cursor.copy("COPY bench_decision_stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "timestamptz", "text", "bytea"])
                for row in rows:
                    await copy.write_row(row)
            await cursor.execute(
                f"INSERT INTO decisions ({_DECISION_COLUMNS})"
                " SELECT decision_id, %s, %s, resource, decide_time, status, data FROM bench_decision_stage"
                " ON CONFLICT (decision_id) DO NOTHING",
                (TENANT, agent),
            )

    async def unnest(connection: Connection, rows: Sequence[Row]) -> None:
        ids, resources, times, statuses, data = (list(column) for column in zip(*rows, strict=True))
        await connection.execute(
            f"INSERT INTO decisions ({_DECISION_COLUMNS})"
            " SELECT u.id, %b, %b, u.resource, u.t, u.status, u.data"
            " FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::bytea[])"
            " AS u (id, resource, t, status, data) ON CONFLICT (decision_id) DO NOTHING",
            (TENANT, agent, ids, resources, times, statuses, data),
        )

    async def executemany(connection: Connection, rows: Sequence[Row]) -> None:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES (%b, %b, %b, %b, %b, %b, %b)"
                " ON CONFLICT (decision_id) DO NOTHING",
                [(r[0], TENANT, agent, r[1], r[2], r[3], r[4]) for r in rows],
            )

    return {"copy": copy, "unnest": unnest, "executemany": executemany}


async def decision_limits(url: str, agent: str, rows: Sequence[Row], batch: int) -> dict[str, float]:
    """Rows/s of each method into the ``decisions`` log; the rows are deleted again after each method."""
    ids = [row[0] for row in rows]
    async with await psycopg.AsyncConnection.connect(psycopg_conninfo(url), autocommit=True) as connection:
        await connection.execute(
            "CREATE TEMP TABLE bench_decision_stage (decision_id text, resource text, decide_time timestamptz,"
            " status text, data bytea) ON COMMIT DELETE ROWS"
        )
        rates = {}
        for name, method in _decision_methods(agent).items():
            rates[name] = await _timed(connection, method, rows, batch)
            await connection.execute("DELETE FROM decisions WHERE decision_id = ANY(%s)", (ids,))
        await connection.execute("DROP TABLE bench_decision_stage")
    return rates


async def _timed(connection: Connection, method: Method, rows: Sequence[Row], batch: int) -> float:
    """Rows/s of ``method`` over ``rows``, one transaction per ``batch`` rows."""
    started = time.perf_counter()
    for offset in range(0, len(rows), batch):
        async with connection.transaction():
            await method(connection, rows[offset : offset + batch])
    return len(rows) / (time.perf_counter() - started)


def fastest(rates: dict[str, float]) -> tuple[str, float]:
    """The name and rate of the fastest method."""
    name = max(rates, key=lambda key: rates[key])
    return name, rates[name]


def decision_row(decision_id: str, resource: str, decide_time: datetime, status: str, data: bytes) -> Row:
    """One row of ``decision_limits``."""
    return (decision_id, resource, decide_time, status, data)
