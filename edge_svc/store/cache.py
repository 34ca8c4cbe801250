"""The Redis adapter of the ``Cache`` port (redis-py's asyncio client)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aredis

# Removes a dirty field only when its version is still the one the collector
# read, so that a write landing between the read and the clear stays dirty.
_CLEAR_IF_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


class RedisCache:
    """Working and session memory in Redis or Dragonfly."""

    def __init__(self, url: str) -> None:
        self._client: aredis.Redis = aredis.Redis.from_url(url, decode_responses=False)
        self._clear: Any = self._client.register_script(_CLEAR_IF_UNCHANGED)

    async def ping(self) -> bool:
        """True when the server answers."""
        return bool(await self._client.ping())

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """SET with PX."""
        await self._client.set(key, value, px=max(ttl_ms, 1))

    async def get(self, key: str) -> bytes | None:
        """GET."""
        return cast(bytes | None, await self._client.get(key))

    async def put_dirty(self, key: str, value: bytes, ttl_ms: int, dirty_hash: str, field: str) -> None:
        """SET with PX and HINCRBY of the dirty version, in one MULTI/EXEC."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=max(ttl_ms, 1))
            pipe.hincrby(dirty_hash, field, 1)
            await pipe.execute()

    async def dirty_versions(self, dirty_hash: str, limit: int) -> dict[str, int]:
        """Up to ``limit`` dirty fields (HSCAN keeps this bounded for large sets)."""
        found: dict[str, int] = {}
        async for name, version in self._client.hscan_iter(dirty_hash, count=max(limit, 10)):
            found[name.decode()] = int(version)
            if len(found) >= limit:
                break
        return found

    async def dirty_count(self, dirty_hash: str) -> int:
        """HLEN."""
        return int(await self._client.hlen(dirty_hash))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET."""
        if not keys:
            return []
        return cast(list[bytes | None], await self._client.mget(list(keys)))

    async def clear_dirty(self, dirty_hash: str, versions: dict[str, int]) -> int:
        """Atomic compare-and-delete of each field (a Lua script)."""
        if not versions:
            return 0
        args: list[str] = []
        for field, version in versions.items():
            args += [field, str(version)]
        return int(await self._clear(keys=[dirty_hash], args=args))

    async def count_keys(self, pattern: str) -> int:
        """SCAN count."""
        total = 0
        async for _ in self._client.scan_iter(match=pattern, count=1000):
            total += 1
        return total

    async def flush_all(self) -> None:
        """FLUSHDB (tests only)."""
        await self._client.flushdb()

    async def close(self) -> None:
        """Close the pool."""
        await self._client.aclose()
