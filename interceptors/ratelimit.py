"""Per-identity rate limiting (token bucket) and per-identity concurrent-stream limits.

Every call costs one token and every message a client streams costs one more,
so a bidi ``SyncSessions`` stream cannot bypass the limit by multiplexing.
Buckets are keyed by the authenticated identity (tenant and agent), so one
edge's flood never drains another's bucket. Health and reflection are exempt.

Two limiters implement the ``Limiter`` port:

* ``TokenBucketLimiter``: in process, for one replica.
* ``RedisTokenBucketLimiter``: the same bucket in Redis, updated atomically by
  a Lua script that reads Redis' own clock (``TIME``), so several central
  replicas share one limit per identity and their clocks do not matter. If
  Redis cannot be reached, it falls back to an in-process bucket (per-replica
  limits) rather than refusing every call, and logs that it did.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from grpc import aio

from aeterna_security.identity import peek_identity
from aeterna_shared.config.model import SyncConfig
from aeterna_shared.errors import ResourceExhausted
from interceptors.errors import abort
from interceptors.handlers import PUBLIC_PREFIXES, HookedInterceptor, PassThrough, UnaryCall, wrap_handler

_log = logging.getLogger(__name__)

LimitedHook = Callable[[str, str], None]
"""Called with (method, reason) when a call or message is refused, for metrics."""


class Limiter(Protocol):
    """Takes a token from ``key``'s bucket."""

    async def acquire(self, key: str) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be available."""
        ...


class TokenBucketLimiter:
    """An in-process token bucket per key: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._next_sweep = clock() + 60.0

    async def acquire(self, key: str) -> float:
        """Take one token (no await inside: atomic on the event loop)."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if now >= self._next_sweep:
            self._sweep(now)
        return wait

    def _sweep(self, now: float) -> None:
        # A bucket that has refilled completely is the same as no bucket, so
        # dropping it bounds memory by the number of recently active identities.
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._next_sweep = now + 60.0


# KEYS[1] bucket; ARGV rate, burst. Returns {allowed, wait-seconds-as-string}
# (Lua numbers would be truncated to integers in the reply).
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RedisTokenBucketLimiter:
    """The token bucket in Redis, shared by every replica that points at the same server."""

    def __init__(self, url: str, rate: float, burst: float, *, prefix: str = "aeterna:ratelimit:") -> None:
        # Imported here so that a single-replica deployment needs no Redis client at import time.
        import redis.asyncio as redis_asyncio  # noqa: PLC0415

        self.rate = rate
        self.burst = burst
        self._prefix = prefix
        self._client = redis_asyncio.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._client.register_script(_BUCKET_SCRIPT)
        self._fallback = TokenBucketLimiter(rate, burst)
        self._warned = False

    async def acquire(self, key: str) -> float:
        """Take one token in Redis; fall back to the local bucket when Redis fails."""
        try:
            allowed, wait = await self._script(keys=[self._prefix + key], args=[self.rate, self.burst])
        except Exception as error:  # any Redis failure: connection, timeout, script error
            if not self._warned:
                _log.warning("shared rate limiter unavailable (%s); limiting per replica", type(error).__name__)
                self._warned = True
            return await self._fallback.acquire(key)
        self._warned = False
        return 0.0 if int(allowed) == 1 else float(wait)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()


def limiter_from_config(sync: SyncConfig) -> Limiter:
    """``sync.rateLimit``/``rateLimitBurst``, in Redis when ``sync.rateLimitRedisUrl`` is set."""
    rate = sync.rate_per_second
    burst = float(sync.rate_limit_burst or max(1, math.ceil(rate)))
    if sync.rate_limit_redis_url:
        return RedisTokenBucketLimiter(sync.rate_limit_redis_url, rate, burst)
    return TokenBucketLimiter(rate, burst)


def _identity_key(context: aio.ServicerContext[Any, Any]) -> str:
    identity = peek_identity()
    if identity is None or not identity.agent_id:
        # Unauthenticated development callers share buckets by peer address.
        return f"peer/{context.peer()}"
    return f"{identity.tenant_id}/{identity.agent_id}"


class _RateHooks(PassThrough):
    def __init__(self, limiter: Limiter, on_limited: LimitedHook | None) -> None:
        self._limiter = limiter
        self._on_limited = on_limited

    async def _take(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        key = _identity_key(context)
        wait = await self._limiter.acquire(key)
        if wait <= 0.0:
            return
        if self._on_limited is not None:
            self._on_limited(method, "RATE_LIMITED")
        raise ResourceExhausted(
            f"rate limit exceeded for {key}; retry in {wait:.3f}s",
            reason="RATE_LIMITED",
            metadata={"identity": key},
            retry_after=wait,
            subject=key,
        )

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        try:
            await self._take(method, context)
        except ResourceExhausted as error:
            await abort(context, error)
        return await call()

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        try:
            await self._take(method, context)
        except ResourceExhausted as error:
            await abort(context, error)
        async for item in responses:
            yield item

    async def requests(
        self, method: str, context: aio.ServicerContext[Any, Any], requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        # The error surfaces in the servicer's loop over requests and is mapped
        # to RESOURCE_EXHAUSTED by the error-mapping interceptor.
        async for item in requests:
            await self._take(method, context)
            yield item


class RateLimitInterceptor(HookedInterceptor):
    """Token bucket per authenticated identity; place it after authentication."""

    def __init__(self, limiter: Limiter, *, on_limited: LimitedHook | None = None) -> None:
        super().__init__(_RateHooks(limiter, on_limited))


class _StreamHooks(PassThrough):
    def __init__(self, limit: int, on_limited: LimitedHook | None) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}
        self._on_limited = on_limited

    async def _enter(self, method: str, context: aio.ServicerContext[Any, Any]) -> str:
        key = _identity_key(context)
        if self._open.get(key, 0) >= self._limit:
            if self._on_limited is not None:
                self._on_limited(method, "TOO_MANY_STREAMS")
            await abort(
                context,
                ResourceExhausted(
                    f"{key} already holds {self._limit} open streams",
                    reason="TOO_MANY_STREAMS",
                    metadata={"identity": key, "limit": str(self._limit)},
                    retry_after=5.0,
                    subject=key,
                ),
            )
        self._open[key] = self._open.get(key, 0) + 1
        return key

    def _leave(self, key: str) -> None:
        remaining = self._open.get(key, 1) - 1
        if remaining <= 0:
            self._open.pop(key, None)
        else:
            self._open[key] = remaining

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        key = await self._enter(method, context)
        try:
            return await call()
        finally:
            self._leave(key)

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        key = await self._enter(method, context)
        try:
            async for item in responses:
                yield item
        finally:
            self._leave(key)

    def open_streams(self, key: str) -> int:
        """How many streams ``key`` holds open now."""
        return self._open.get(key, 0)


class StreamLimitInterceptor(aio.ServerInterceptor):
    """At most ``limit`` concurrent streaming calls (any side streaming) per identity."""

    def __init__(self, limit: int, *, on_limited: LimitedHook | None = None) -> None:
        self._hooks = _StreamHooks(limit, on_limited)

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        if not (handler.request_streaming or handler.response_streaming):
            return handler
        return wrap_handler(handler, method, self._hooks)
