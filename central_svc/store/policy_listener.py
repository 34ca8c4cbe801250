"""The one dedicated LISTEN connection per process that tells the ``PolicyHub`` about new versions.

A LISTEN connection can die silently (a failover, ``pg_terminate_backend``, a
cut link). The listener wakes up every ``probe_interval`` to check its
connection with a query; on any failure it reconnects with backoff, LISTENs
again and then asks the hub to re-read the store, so that a version published
while it was deaf is still pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import psycopg

from central_svc.store.policies import CHANNEL

_log = logging.getLogger(__name__)


class PolicyListener:
    """Runs ``on_change`` after each notification and after each (re)connection."""

    def __init__(self, conninfo: str, on_change: Callable[[], Awaitable[None]], *, probe_interval: float = 5.0) -> None:
        self._conninfo = conninfo
        self._on_change = on_change
        self._probe_interval = probe_interval
        self._task: asyncio.Task[None] | None = None
        self._connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        """How many times the connection was re-opened after a failure (for tests and metrics)."""

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._run(), name="policy-listener")

    async def stop(self) -> None:
        """Stop and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            await self._connection.close()

    async def backend_pid(self) -> int | None:
        """PID of the listening backend (tests terminate it to simulate a dead connection)."""
        await self.connected.wait()
        return None if self._connection is None else self._connection.info.backend_pid

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as connection:
                    self._connection = connection
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        self.reconnects += 1
                        _log.info("policy listener reconnected; re-reading the newest policy version")
                    first = False
                    delay = 0.1
                    await self._on_change()
                    self.connected.set()
                    await self._listen(connection)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.connected.clear()
                _log.warning("policy listener lost its connection (%s); reconnecting in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0) * random.uniform(0.8, 1.2)

    async def _listen(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            notified = False
            async for _ in connection.notifies(timeout=self._probe_interval, stop_after=1):
                notified = True
            if notified:
                await self._on_change()
            else:
                # No news: make sure the connection is still alive (a dead one raises here).
                await connection.execute("SELECT 1")
