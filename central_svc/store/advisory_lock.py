"""The ``LeaderLock`` port on a PostgreSQL session-level advisory lock, held by one dedicated connection.

Several central replicas share one database; work that only one of them may
do (scheduled snapshots) goes to whichever holds ``pg_try_advisory_lock(key)``.
The lock is the connection's: it lasts exactly as long as that session, so a
leader that dies, is killed or loses its connection (``pg_terminate_backend``,
a failover) releases it without anyone's help, and the next replica that asks
takes it over. A held lock is confirmed with ``SELECT 1`` on its connection
(asking ``pg_try_advisory_lock`` again would stack a second hold on it).

Each replica keeps one connection for it, leader or not (a follower asks on
it again every little while). It needs a real session: a pooler in transaction mode (PgBouncer) in front of
PostgreSQL would hand the lock's session to others. Driver errors are mapped
like every store's (``central_svc.store.database.translated_errors``): the
database unreachable is ``Unavailable`` / ``DATABASE_UNAVAILABLE``, and the
connection is dropped, so the lock counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from aeterna_shared.errors import Unavailable
from central_svc.store.database import Connection, translated_errors

_log = logging.getLogger(__name__)

SNAPSHOT_LOCK_KEY = 7411002
"""The advisory lock key of scheduled snapshots (migrations use 7411001)."""

_TIMEOUT_SECONDS = 10.0
"""Longest a connect or a query may take before the lock counts as lost (a half-open connection)."""


class AdvisoryLock:
    """``pg_try_advisory_lock(key)`` on a connection of its own (opened on first use, reopened after a failure)."""

    def __init__(self, conninfo: str, key: int = SNAPSHOT_LOCK_KEY) -> None:
        self._conninfo = conninfo
        self._key = key
        self._connection: Connection | None = None
        self._held = False

    @property
    def backend_pid(self) -> int | None:
        """PID of the backend of the lock's connection (tests terminate it to simulate a lost leader)."""
        return None if self._connection is None else self._connection.info.backend_pid

    async def hold(self) -> bool:
        """True while this process holds the lock (see ``central_svc.ports.LeaderLock.hold``)."""
        try:
            async with asyncio.timeout(_TIMEOUT_SECONDS):
                with translated_errors():
                    if self._connection is None or self._connection.closed:
                        self._held = False
                        self._connection = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True, connect_timeout=int(_TIMEOUT_SECONDS)
                        )
                    if self._held:
                        await self._connection.execute("SELECT 1")
                    else:
                        cursor = await self._connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                        row = await cursor.fetchone()
                        self._held = bool(row is not None and row[0])
        except TimeoutError as error:
            await self._drop()
            raise Unavailable(
                "central's database is unreachable; retry later", reason="DATABASE_UNAVAILABLE"
            ) from error
        except Exception:
            await self._drop()
            raise
        return self._held

    async def release(self) -> None:
        """Close the lock's connection: PostgreSQL releases a session's advisory locks with it."""
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection, self._held = self._connection, None, False
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
