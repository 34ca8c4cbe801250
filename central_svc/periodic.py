"""A background job run at a fixed interval while the server runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

_log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval`` seconds; a failing run is logged and the schedule goes on."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]], *, first_now: bool) -> None:
        self._name = name
        self._interval = interval
        self._work = work
        self._first_now = first_now
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin the schedule (the first run now, or one interval from now)."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """End the schedule, cancelling a run in progress."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        if not self._first_now:
            await asyncio.sleep(self._interval)
        while True:
            try:
                await self._work()
            except Exception:
                _log.exception("%s failed; next run in %.0f s", self._name, self._interval)
            await asyncio.sleep(self._interval)
