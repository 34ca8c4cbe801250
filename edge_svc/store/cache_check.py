"""The start-up check of an external session store (``cache.url``).

Session memory is acknowledged as soon as the cache has it, so the cache at
``cache.url`` must keep every key until the edge has synced it, and must keep
it across its own restart:

* ``maxmemory-policy`` must be ``noeviction`` or a ``volatile-*`` policy: a
  session with unsynced changes, its pending changes and the dirty index carry
  no TTL, so these policies can only evict synced copies (which central holds)
  and working memory; when nothing evictable is left, writes are refused and
  the edge answers RESOURCE_EXHAUSTED. An ``allkeys-*`` policy would drop
  acknowledged sessions and their dirty marks silently;
* ``appendonly`` must be ``yes`` (without it, a restart of the cache loses
  everything written since the last snapshot).

A server that cannot tell (``CONFIG GET`` refused, renamed or unsupported, as
on some managed services and some Dragonfly settings) cannot be verified and
is refused too. ``cache.allowUnsafeCache: true`` starts anyway, with a
WARNING, for people who accept the risk. Working memory on its own cache
(``cache.workingUrl``) is not checked: it may evict. A server that cannot be
reached is ``Unavailable`` (reason ``CACHE_UNAVAILABLE``), never a redis exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aeterna_shared.errors import FailedPrecondition, Unavailable

_log = logging.getLogger(__name__)

OVERRIDE_KEY = "cache.allowUnsafeCache"

_REQUIRED: dict[str, tuple[frozenset[str], str, str]] = {
    "maxmemory-policy": (
        frozenset({"noeviction", "volatile-lru", "volatile-lfu", "volatile-ttl", "volatile-random"}),
        "volatile-lru (or noeviction)",
        "an allkeys-* policy can evict unsynced sessions and the dirty index",
    ),
    "appendonly": (
        frozenset({"yes"}),
        "yes",
        "without an append-only file a cache restart loses acknowledged sessions",
    ),
}


@dataclass(frozen=True)
class CacheProblem:
    """One setting of the session store that does not give the guarantee."""

    setting: str
    found: str
    needed: str
    why: str

    def describe(self) -> str:
        """One line for the error message."""
        return f"{self.setting} is {self.found}, needs {self.needed} ({self.why})"


def redacted(url: str) -> str:
    """``url`` without its user and password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _config_get(client: aredis.Redis, setting: str) -> str | None:
    """The server's value of ``setting``, or None when the server will not say (connection errors propagate)."""
    try:
        reply = await client.config_get(setting)
    except ResponseError as error:
        _log.debug("CONFIG GET %s failed: %s", setting, error)
        return None
    value = reply.get(setting) if isinstance(reply, dict) else None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def session_store_problems(url: str) -> list[CacheProblem]:
    """What is wrong with the cache at ``url`` as a session store (empty: it is safe)."""
    client = aredis.Redis.from_url(url, socket_timeout=10, decode_responses=True)
    try:
        return await _problems(client, url)
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        raise Unavailable(
            f"the session store at cache.url {redacted(url)} cannot be reached: {error}", reason="CACHE_UNAVAILABLE"
        ) from error
    finally:
        await client.aclose()


async def _problems(client: aredis.Redis, url: str) -> list[CacheProblem]:
    """The settings of the server behind ``client`` that break the guarantee."""
    problems: list[CacheProblem] = []
    for setting, (accepted, needed, why) in _REQUIRED.items():
        found = await _config_get(client, setting)
        if found is None:
            problems.append(CacheProblem(setting, "unknown (CONFIG GET refused or unsupported)", needed, why))
        elif found.lower() not in accepted:
            problems.append(CacheProblem(setting, found, needed, why))
    fsync = await _config_get(client, "appendfsync")
    if fsync is not None and fsync.lower() != "always" and not problems:
        _log.warning(
            "session store %s has appendfsync %s: a crash of that server can lose up to a second of "
            "acknowledged session writes (appendfsync always loses none)",
            redacted(url),
            fsync,
        )
    return problems


async def check_session_store(url: str, *, allow_unsafe: bool) -> None:
    """Refuse to start on a session store that may evict or forget keys, unless ``allow_unsafe``.

    Raises ``FailedPrecondition`` (reason ``UNSAFE_CACHE``) naming each
    setting, the value found and the value needed, and the override key.
    """
    problems = await session_store_problems(url)
    if not problems:
        return
    details = "; ".join(problem.describe() for problem in problems)
    if allow_unsafe:
        _log.warning(
            "session store %s is unsafe: %s. Starting anyway because %s is true: acknowledged sessions can be lost",
            redacted(url),
            details,
            OVERRIDE_KEY,
        )
        return
    raise FailedPrecondition(
        f"the session store at cache.url {redacted(url)} cannot keep what the edge acknowledges: {details}. "
        f"Configure the server so, or set {OVERRIDE_KEY}: true to start anyway and accept losing sessions",
        reason="UNSAFE_CACHE",
        metadata={problem.setting: problem.found for problem in problems},
    )
