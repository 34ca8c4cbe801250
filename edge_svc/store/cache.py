"""The Redis adapter of the ``Cache`` and ``SessionStore`` ports (redis-py's asyncio client).

What makes session memory safe here:

* a session update is one optimistic transaction (WATCH the session and its
  pending-change hash, read, compute, MULTI/EXEC, retry when another writer
  won), so concurrent appends from any number of connections or processes
  never lose one another;
* a session carries no TTL until central acknowledged its last change, and
  it lives in a store that evicts only keys with a TTL (``volatile-lru``, or
  ``noeviction``; checked at start-up for an external store): it can neither
  expire nor be evicted before central has it. ``release`` starts its TTL;
* a store that is full of such keys refuses the write (Redis answers OOM),
  which this adapter maps to ``ResourceExhausted`` with a retry delay, before
  the agent is answered;
* library errors are mapped here, at the adapter: callers see the project's
  own ``Unavailable`` / ``ResourceExhausted``, never a redis exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.asyncio as aredis
import redis.exceptions as redis_errors

from aeterna_shared.errors import Aborted, ResourceExhausted, Unavailable
from edge_svc.ports import Mutation

# Clears a session's dirty mark only when its version is still the one the
# collector read, so that a write landing between the read and the clear stays
# dirty, and drops its pending changes with it (they are in the outbox now).
# KEYS: dirty hash, then one pending key per session; ARGV: (field, version) pairs.
_CLEAR_IF_UNCHANGED = """
local removed = 0
for i = 0, #ARGV / 2 - 1 do
  local field, version = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if redis.call('HGET', KEYS[1], field) == version then
    redis.call('HDEL', KEYS[1], field)
    redis.call('DEL', KEYS[2 + i])
    removed = removed + 1
  end
end
return removed
"""

# Once central acknowledged a session's change, and unless the session changed
# again since, its copy may go: it gets its TTL (and becomes evictable under
# volatile-lru), or is dropped at once when it was a partial copy.
# KEYS: dirty hash, then one session key per session; ARGV: ttl_ms, then (field, drop) pairs.
_RELEASE = """
local released = 0
for i = 0, (#ARGV - 1) / 2 - 1 do
  local field, drop = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if redis.call('HEXISTS', KEYS[1], field) == 0 then
    if drop == '1' then
      redis.call('DEL', KEYS[2 + i])
    else
      redis.call('PEXPIRE', KEYS[2 + i], ARGV[1])
    end
    released = released + 1
  end
end
return released
"""

_MAX_UPDATE_ATTEMPTS = 200
"""Optimistic retries of one session update before ABORTED (only under extreme contention on one session)."""


@contextlib.asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    """Translate redis errors into the project's own (one table, at the adapter)."""
    try:
        yield
    except redis_errors.OutOfMemoryError as error:
        raise ResourceExhausted(
            f"the edge's session store is full ({what} refused, nothing was stored); "
            "retry after the next sync frees space, or raise cache.layers.session.maxSize",
            reason="SESSION_STORE_FULL",
            retry_after=5.0,
            subject="cache.layers.session.maxSize",
        ) from error
    except redis_errors.ResponseError as error:
        if "OOM" in str(error) or "maxmemory" in str(error):
            raise ResourceExhausted(
                f"the edge's cache is full ({what} refused, nothing was stored)",
                reason="SESSION_STORE_FULL",
                retry_after=5.0,
                subject="cache",
            ) from error
        raise
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
        raise Unavailable(
            f"the edge's cache cannot be reached ({what}); nothing was stored", reason="CACHE_UNAVAILABLE"
        ) from error


class RedisCache:
    """Working and session memory in Redis (or a Redis-protocol server)."""

    def __init__(self, url: str) -> None:
        self._client: aredis.Redis = aredis.Redis.from_url(url, decode_responses=False)
        self._clear: Any = self._client.register_script(_CLEAR_IF_UNCHANGED)
        self._release: Any = self._client.register_script(_RELEASE)

    async def ping(self) -> bool:
        """True when the server answers."""
        async with _mapped("ping"):
            return bool(await self._client.ping())

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """SET with PX."""
        async with _mapped("write"):
            await self._client.set(key, value, px=max(ttl_ms, 1))

    async def set_if_absent(self, key: str, value: bytes, ttl_ms: int) -> bool:
        """SET NX with PX: a copy that never replaces what is already held."""
        async with _mapped("write"):
            return bool(await self._client.set(key, value, px=max(ttl_ms, 1), nx=True))

    async def get(self, key: str) -> bytes | None:
        """GET."""
        async with _mapped("read"):
            return cast(bytes | None, await self._client.get(key))

    async def update(self, key: str, pending_key: str, dirty_hash: str, field: str, mutate: Mutation) -> bytes:
        """Apply ``mutate`` atomically to ``key`` and ``pending_key`` and bump ``field``'s dirty version.

        The value is stored without a TTL (it is dirty); the pending hash is
        replaced by what ``mutate`` returns. Returns the new value.
        """
        async with _mapped("session write"), self._client.pipeline(transaction=True) as pipe:
            for _ in range(_MAX_UPDATE_ATTEMPTS):
                try:
                    await pipe.watch(key, pending_key)
                    current = cast(bytes | None, await pipe.get(key))
                    raw_pending = cast(dict[bytes, bytes], await pipe.hgetall(pending_key))
                    pending = {k.decode(): v.decode() for k, v in raw_pending.items()}
                    value, new_pending = mutate(current, pending)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves multi() untyped
                    pipe.set(key, value)
                    pipe.delete(pending_key)
                    if new_pending:
                        pipe.hset(pending_key, mapping=cast(Any, new_pending))
                    pipe.hincrby(dirty_hash, field, 1)
                    await pipe.execute()
                    return value
                except redis_errors.WatchError:
                    continue
        raise Aborted(f"session {field!r} is being written by too many callers at once; retry", reason="CONTENTION")

    async def dirty_versions(self, dirty_hash: str, limit: int) -> dict[str, int]:
        """Up to ``limit`` dirty fields (HSCAN keeps this bounded for large sets)."""
        found: dict[str, int] = {}
        async with _mapped("read"):
            async for name, version in self._client.hscan_iter(dirty_hash, count=max(limit, 10)):
                found[name.decode()] = int(version)
                if len(found) >= limit:
                    break
        return found

    async def dirty_count(self, dirty_hash: str) -> int:
        """HLEN."""
        async with _mapped("read"):
            return int(await self._client.hlen(dirty_hash))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET."""
        if not keys:
            return []
        async with _mapped("read"):
            return cast(list[bytes | None], await self._client.mget(list(keys)))

    async def hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL of each key, in one round trip."""
        if not keys:
            return []
        async with _mapped("read"), self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            results = cast(list[dict[bytes, bytes]], await pipe.execute())
        return [{k.decode(): v.decode() for k, v in result.items()} for result in results]

    async def clear_dirty(self, dirty_hash: str, entries: Sequence[tuple[str, int, str]]) -> int:
        """Atomically clear each (field, version, pending_key) whose version did not change (a Lua script)."""
        if not entries:
            return 0
        keys: list[str] = [dirty_hash]
        args: list[str] = []
        for field, version, pending_key in entries:
            keys.append(pending_key)
            args += [field, str(version)]
        async with _mapped("clear"):
            return int(await self._clear(keys=keys, args=args))

    async def release(self, dirty_hash: str, entries: Sequence[tuple[str, str, bool]], ttl_ms: int) -> int:
        """For each (field, key, drop) not dirty again: start ``key``'s TTL, or delete it when ``drop``."""
        if not entries:
            return 0
        keys: list[str] = [dirty_hash]
        args: list[str | int] = [max(ttl_ms, 1)]
        for field, key, drop in entries:
            keys.append(key)
            args += [field, "1" if drop else "0"]
        async with _mapped("release"):
            return int(await self._release(keys=keys, args=args))

    async def count_keys(self, pattern: str) -> int:
        """SCAN count."""
        total = 0
        async with _mapped("read"):
            async for _ in self._client.scan_iter(match=pattern, count=1000):
                total += 1
        return total

    async def flush_all(self) -> None:
        """FLUSHDB (tests only)."""
        async with _mapped("flush"):
            await self._client.flushdb()

    async def close(self) -> None:
        """Close the pool."""
        await self._client.aclose()
