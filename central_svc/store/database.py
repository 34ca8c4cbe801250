"""The connection pool central's stores share, and the mapping of driver errors to domain errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from aeterna_shared.errors import InvalidArgument, Unavailable
from central_svc.store.urls import psycopg_conninfo

DATA_SQLSTATE_CLASSES = ("22", "54")
"""SQLSTATE classes caused by the data itself: data exception, program limit exceeded."""


def is_data_error(error: psycopg.Error) -> bool:
    """True when PostgreSQL (or psycopg) refused a value, not when the database failed."""
    if isinstance(error, psycopg.DataError):
        return True
    sqlstate = error.sqlstate or ""
    return sqlstate[:2] in DATA_SQLSTATE_CLASSES


class Database:
    """An async psycopg pool on central's database.

    Built by the wiring (``__main__`` or a test), opened once, closed on shutdown.
    """

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self.url = url
        self.conninfo = psycopg_conninfo(url)
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self.conninfo, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        """Open the pool and wait for the first connection."""
        await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        """Close every connection."""
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """A pooled autocommit connection; driver failures become ``Unavailable`` (retryable)."""
        try:
            async with self._pool.connection() as connection:
                yield connection
        except psycopg.Error as error:
            if is_data_error(error):
                # A data exception (class 22: a NUL, a value out of range; psycopg refusing a NUL
                # itself) or a program limit (class 54: an index row too large) always comes from a
                # value the request carried: retrying cannot help, so it is no UNAVAILABLE.
                raise InvalidArgument(
                    f"a value in the request cannot be stored: {error.diag.message_primary or error}",
                    reason="UNSTORABLE_VALUE",
                ) from None
            if isinstance(error, psycopg.OperationalError):
                raise Unavailable(
                    "central's database is unreachable; retry later", reason="DATABASE_UNAVAILABLE"
                ) from error
            raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """A pooled connection inside one transaction (committed on success, rolled back on error)."""
        async with self.connection() as connection, connection.transaction():
            yield connection
