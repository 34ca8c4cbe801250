"""The connection pool central's stores share, and the one mapping of driver errors to the project's errors.

Every store entry point runs its statements inside ``Database.connection()`` or
``Database.transaction()`` (the writes of a batch run inside the ledger's
``transaction()``), so no psycopg exception leaves ``central_svc.store``:
``translated_errors`` maps them, in this one place.

* A data exception (SQLSTATE class 22), a program limit (class 54) or psycopg's
  ``DataError`` (a NUL it refused) comes from a value of the request:
  ``InvalidArgument`` with reason ``UNSTORABLE_VALUE``. Retrying cannot help.
* Any ``OperationalError`` (the connection refused or lost, an administrator
  shutdown, too many connections, disk full or out of memory, a serialization
  failure or deadlock, a cancelled statement, the pool's ``PoolTimeout``):
  ``Unavailable`` with reason ``DATABASE_UNAVAILABLE``, "central's database is
  unreachable; retry later", with RetryInfo. The edge keeps the batch and
  sends it again.
* Any other psycopg error (a constraint, a syntax error) is a bug: it is left
  alone, and the RPC error mapping answers INTERNAL and logs it.

Every pooled connection knows pgvector's ``vector`` type (``pgvector.psycopg``,
registered when the pool opens the connection), so embeddings travel as numpy
float32 arrays in pgvector's binary form both ways: no text literal is built
or parsed per component, and a float32 arrives exactly as it was stored.

Readiness (``Database.ping``) does not use the pool: it asks ``SELECT 1`` on a
connection of its own, direct like the other session-bound ones (LISTEN, the
snapshot lock). Under overload every pooled connection is busy and requests
queue for them; a probe queued behind them would time out although PostgreSQL
is fine, and the replica would report NOT_SERVING, so a balancer would pull a
replica that is merely busy. The readiness connection is opened on the first
ping, dropped on any failure (the next ping reconnects) and closed with the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from aeterna_shared.errors import InvalidArgument, Unavailable
from central_svc.ports import Transaction
from central_svc.store.urls import psycopg_conninfo

_log = logging.getLogger(__name__)

Connection = AsyncConnection[tuple[Any, ...]]
"""A pooled connection, as the stores use it."""

PING_CONNECT_TIMEOUT_SECONDS = 3
"""Longest the readiness connection may take to connect (libpq's connect_timeout): a database that is
down fails the probe fast instead of holding it until the readiness timeout."""

DATA_SQLSTATE_CLASSES = ("22", "54")
"""SQLSTATE classes caused by the data itself: data exception, program limit exceeded."""


def is_data_error(error: psycopg.Error) -> bool:
    """True when PostgreSQL (or psycopg) refused a value, not when the database failed."""
    if isinstance(error, psycopg.DataError):
        return True
    sqlstate = error.sqlstate or ""
    return sqlstate[:2] in DATA_SQLSTATE_CLASSES


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """psycopg errors raised in the block become the project's errors (the table in the module docstring)."""
    try:
        yield
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


def connection_of(transaction: Transaction) -> Connection:
    """The psycopg connection of a ``Transaction`` that ``Database.transaction()`` opened (for the stores)."""
    if not isinstance(transaction, AsyncConnection):
        raise TypeError(f"{type(transaction).__name__} is no transaction on central's PostgreSQL database")
    return transaction


async def _register_vector(connection: Connection) -> None:
    """Teach a new pooled connection pgvector's types (binary dumpers/loaders for numpy arrays and ``Vector``).

    The migrations create the extension before central opens its pool, so the
    type is there; without it (a database nobody migrated) the connection
    stays usable for everything but vectors rather than being refused forever
    by the pool, and a vector statement then fails loudly.
    """
    try:
        await register_vector_async(connection)
    except psycopg.ProgrammingError as error:  # pgvector's "vector type not found in the database"
        _log.warning("central's database has no pgvector type; vector statements will fail: %s", error)


class Database:
    """An async psycopg pool on central's database, and the readiness probe's own connection.

    Built by the wiring (``__main__`` or a test), opened once, closed on shutdown.
    ``ping`` never takes a pooled connection: readiness must not queue behind
    requests, or a replica busy with every pooled connection would report
    NOT_SERVING while its database answers (see the module docstring).
    """

    def __init__(self, url: str, *, max_size: int = 10, direct_url: str | None = None) -> None:
        self.url = url
        self.conninfo = psycopg_conninfo(url)
        self.direct_conninfo = psycopg_conninfo(direct_url) if direct_url else self.conninfo
        """For connections that hold session state (LISTEN, advisory locks): never through a
        transaction-pooling PgBouncer (``postgresql.directUrl``)."""
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            configure=_register_vector,
        )
        self._ping_connection: Connection | None = None
        self._ping_lock = asyncio.Lock()

    async def open(self) -> None:
        """Open the pool and wait for the first connection."""
        await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        """Close every connection: the pool's and the readiness connection."""
        async with self._ping_lock:
            await self._drop_ping_connection()
        await self._pool.close()

    @property
    def ping_backend_pid(self) -> int | None:
        """PID of the readiness connection's backend (None before the first ping or after a failure)."""
        connection = self._ping_connection
        return None if connection is None or connection.closed else connection.info.backend_pid

    async def ping(self) -> None:
        """``SELECT 1`` on the readiness connection, never a pooled one; ``Unavailable`` when the database is down.

        The connection is direct (``direct_conninfo``) and autocommit, opened on the
        first ping with ``PING_CONNECT_TIMEOUT_SECONDS``. Any failure, a cancellation
        by the caller's timeout included, closes and drops it, so the next ping
        reconnects instead of reusing a broken connection. Concurrent pings take turns.
        """
        async with self._ping_lock:
            try:
                with translated_errors():
                    if self._ping_connection is None or self._ping_connection.closed:
                        self._ping_connection = await AsyncConnection.connect(
                            self.direct_conninfo, autocommit=True, connect_timeout=PING_CONNECT_TIMEOUT_SECONDS
                        )
                    await self._ping_connection.execute("SELECT 1")
            except BaseException:  # also a cancellation mid-query: the connection's state is unknown
                await self._drop_ping_connection()
                raise

    async def _drop_ping_connection(self) -> None:
        connection, self._ping_connection = self._ping_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled autocommit connection; driver failures become the project's errors (``translated_errors``)."""
        with translated_errors():
            async with self._pool.connection() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside one transaction (committed on success, rolled back on error).

        The connection is also the ``Transaction`` of ``central_svc.ports`` that the ledger hands to the
        domain; stores get it back with ``connection_of``.
        """
        async with self.connection() as connection, connection.transaction():
            yield connection
