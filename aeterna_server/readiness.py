"""Readiness that tells the truth: SERVING only while the process's one dependency answers.

A replica whose database (central) or session store (edge) is gone cannot do
its work, but it is not broken either: restarting it would not bring the
dependency back. So ``ReadinessWatch`` asks the dependency a cheap question
(``SELECT 1``, ``PING``) every ``interval`` with a short ``timeout`` and sets
the readiness names (the whole server "" and each service) to NOT_SERVING
once it failed ``threshold`` times in a row (one slow answer, such as a pool
busy for a moment, does not take a replica out), and to SERVING again at the
first answer; balancers and
Kubernetes then send calls to the replicas that can answer. Liveness
(``aeterna_server.server.LIVENESS_SERVICE``) is left alone.

A change is logged once (WARNING when the dependency is lost, INFO when it is
back), not on every poll. Once the server entered its graceful shutdown the
health servicer ignores the watch: NOT_SERVING stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health, health_pb2

_log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
"""Asks the dependency once; returning is success, raising (anything) is failure."""

READINESS_INTERVAL_SECONDS = 5.0
"""How often the dependency is asked; a change is seen within about this long."""
READINESS_TIMEOUT_SECONDS = 3.0
"""How long one question may take before it counts as failed."""
READINESS_THRESHOLD = 2
"""Failed questions in a row before the process reports NOT_SERVING."""


class ReadinessWatch:
    """Polls ``probe`` and mirrors its outcome into the readiness names of ``health``."""

    def __init__(
        self,
        health_servicer: health.aio.HealthServicer,
        names: Sequence[str],
        probe: Probe,
        *,
        dependency: str,
        interval: float = READINESS_INTERVAL_SECONDS,
        timeout: float = READINESS_TIMEOUT_SECONDS,
        threshold: int = READINESS_THRESHOLD,
    ) -> None:
        """``names`` are the service names besides ""; ``dependency`` names it in the log ("PostgreSQL")."""
        self._health = health_servicer
        self._names = ["", *names]
        self._probe = probe
        self._dependency = dependency
        self._interval = interval
        self._timeout = timeout
        self._threshold = max(threshold, 1)
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self.ready: bool | None = None
        """The last outcome (None before the first check)."""

    async def check_once(self) -> bool:
        """Ask the dependency once, set the readiness names, and return whether the process is ready."""
        why = ""
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe()
            self._failures = 0
        except Exception as error:  # any failure of the dependency counts, never a crash
            self._failures += 1
            why = str(error) or type(error).__name__
        # Ready while answering, and before the threshold of failures in a row is reached (not at the start).
        ok = self._failures == 0 or (self.ready is True and self._failures < self._threshold)
        if ok != self.ready:
            if ok and self.ready is not None:
                _log.info("%s reachable again: ready (SERVING)", self._dependency)
            elif not ok:
                _log.warning("%s unreachable (%s): not ready (NOT_SERVING) until it answers", self._dependency, why)
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self._names:
                await self._health.set(name, status)
        self.ready = ok
        return ok

    def start(self) -> None:
        """Check now and then every ``interval`` in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"readiness-{self._dependency}")

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # setting a status failed: try again next time
                _log.exception("could not report readiness")
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stop checking (before the server reports NOT_SERVING for its shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
