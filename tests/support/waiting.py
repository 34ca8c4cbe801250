"""Waiting for a condition in a test: a bounded poll, never a sleep of a guessed length.

A deadline here is a bound sized for a loaded 2-core CI machine, not a
measurement: nothing asserts how fast a condition came true.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_until(check: Callable[[], bool | Awaitable[bool]], what: str, limit: float = 60.0) -> None:
    """Poll ``check`` (plain or async) until it holds; fail naming ``what`` after ``limit`` seconds.

    An RPC error raised by ``check`` counts as "not yet" (a server still
    starting, a channel reconnecting); the last one is shown on failure.
    """
    deadline = time.monotonic() + limit
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            outcome = check()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
        except aio.AioRpcError as error:
            last = error
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {limit:.0f}s waiting until {what} (last error: {last})")


async def health_statuses(stub: health_pb2_grpc.HealthStub, names: tuple[str, ...]) -> set[int]:
    """The ``grpc.health.v1`` status of each of ``names``, as a set (one element when they agree)."""
    replies = [await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5) for name in names]
    return {reply.status for reply in replies}
