"""The health monitor: the edge's view of its link to central.

A grpc health ``Check`` runs every ``healthCheck.interval`` (jittered) with
``healthCheck.timeout``. After ``failureThreshold`` consecutive failures the
link is OFFLINE: nothing calls central, reads are served from the cache and
writes are queued. While offline the same check keeps running every interval;
the first success flips the link back ONLINE and fires the ``on_online``
callbacks (the sync engine resumes from central's checkpoint and drains).

The edge starts OFFLINE and runs one check before it reports ready, so a
freshly started edge with no central never waits on timeouts.

The check asks for central's readiness (service ""), which is NOT_SERVING
while central cannot reach its PostgreSQL: the edge then goes OFFLINE and
queues, as it should, since central could not store a batch anyway. Behind a
balancer the check lands on any replica; one that lost its database is taken
out of rotation by its own readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aeterna_shared.config.model import HealthCheck
from edge_svc.backoff import jittered

_log = logging.getLogger(__name__)

HealthProbe = Callable[[float], Awaitable[bool]]
Listener = Callable[[], Awaitable[None]]


@dataclass
class LinkState:
    """Online or offline, and since when."""

    online: bool = False
    changed_at: float = field(default_factory=time.time)
    consecutive_failures: int = 0
    became_online: asyncio.Event = field(default_factory=asyncio.Event)


class LinkMonitor:
    """Runs the health checks and owns ``LinkState``."""

    def __init__(self, health: HealthCheck, probe: HealthProbe, *, enabled: bool = True) -> None:
        """``health`` is ``centralServer.healthCheck``; ``enabled`` False (``sync.enabled`` off) never checks."""
        self._interval = health.interval.total_seconds()
        self._timeout = health.timeout.total_seconds()
        self._threshold = health.failure_threshold
        self._probe = probe
        self._enabled = enabled
        self.state = LinkState()
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        # Listener runs (the reconnect drain) are tracked so that stop() can end them:
        # one left running would touch stores that shutdown has already closed.
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def online(self) -> bool:
        """True while central is considered reachable."""
        return self.state.online

    def on_online(self, listener: Listener) -> None:
        """Run ``listener`` (as a task) each time the link comes back online."""
        self._listeners.append(listener)

    async def check_once(self) -> bool:
        """One health check; updates the state and returns whether it succeeded."""
        if not self._enabled:
            return False
        try:
            ok = await self._probe(self._timeout)
        except Exception as error:  # a probe that raises is a failed check, never a crash
            _log.debug("health check raised: %s", error)
            ok = False
        if ok:
            self.state.consecutive_failures = 0
            if not self.state.online:
                self._set(True)
        else:
            self.state.consecutive_failures += 1
            if self.state.online and self.state.consecutive_failures >= self._threshold:
                self._set(False)
        return ok

    def _set(self, online: bool) -> None:
        self.state.online = online
        self.state.changed_at = time.time()
        if online:
            _log.info("central reachable: edge ONLINE")
            self.state.became_online.set()
            for listener in self._listeners:
                task: asyncio.Task[None] = asyncio.ensure_future(listener())
                self._runs.add(task)
                task.add_done_callback(self._runs.discard)
                task.add_done_callback(_log_failure)
        else:
            _log.warning(
                "central failed %d health checks in a row: edge OFFLINE (serving from cache, queueing writes)",
                self.state.consecutive_failures,
            )
            self.state.became_online.clear()

    async def wait_online(self) -> None:
        """Return once the link is online."""
        await self.state.became_online.wait()

    def start(self) -> None:
        """Start the periodic checks."""
        if self._enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="link-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(jittered(self._interval))
            await self.check_once()

    async def stop(self) -> None:
        """Stop the checks and any on-online listener still running."""
        tasks = [*self._runs, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("on-online listener failed", exc_info=task.exception())
