"""Working and session memory on top of the ``Cache`` port.

Keys are prefixed with the caller's tenant, so that one tenant can never name
another's data. Working memory is a plain value with a TTL and is never synced.
Session memory is a JSON document with a TTL (refreshed on every write); each
write also bumps the session's version in the tenant's dirty hash in the same
transaction, which is how the session collector knows what to send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from aeterna_shared.errors import InvalidArgument
from edge_svc.ports import Cache
from edge_svc.records import JsonDict, Message, SessionRecord, now_ns

MAX_KEY_BYTES = 512


def working_key(tenant: str, key: str) -> str:
    """Redis key of a working-memory value."""
    return f"aeterna:{tenant}:wm:{key}"


def session_key(tenant: str, session_id: str) -> str:
    """Redis key of a session."""
    return f"aeterna:{tenant}:session:{session_id}"


def dirty_hash(tenant: str) -> str:
    """Redis hash of the tenant's sessions waiting for sync (field: session id, value: version)."""
    return f"aeterna:{tenant}:sessions:dirty"


def _check_key(field: str, value: str) -> None:
    if not value:
        raise InvalidArgument.for_field(field, "must not be empty")
    if len(value.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument.for_field(field, f"must be at most {MAX_KEY_BYTES} bytes")


@dataclass
class WorkingMemory:
    """Short-lived values, local to this edge."""

    cache: Cache
    default_ttl: timedelta

    async def set(self, tenant: str, key: str, value: object, ttl: timedelta | None) -> int:
        """Store ``value`` (any JSON value); returns its expiry time in nanoseconds."""
        _check_key("key", key)
        lifetime = ttl if ttl is not None and ttl > timedelta(0) else self.default_ttl
        ttl_ms = max(int(lifetime.total_seconds() * 1000), 1)
        await self.cache.set(working_key(tenant, key), json.dumps(value).encode(), ttl_ms)
        return now_ns() + ttl_ms * 1_000_000

    async def get(self, tenant: str, key: str) -> tuple[bool, object]:
        """(found, value)."""
        _check_key("key", key)
        raw = await self.cache.get(working_key(tenant, key))
        if raw is None:
            return False, None
        return True, json.loads(raw)


@dataclass
class SessionMemory:
    """Sessions held at the edge and marked for the session sync on every write."""

    cache: Cache
    ttl: timedelta
    on_dirty: Callable[[], None] = lambda: None
    """Called after every write so the collector can flush early when a batch fills up."""

    @property
    def _ttl_ms(self) -> int:
        return max(int(self.ttl.total_seconds() * 1000), 1)

    async def put(self, tenant: str, session: SessionRecord) -> SessionRecord:
        """Write a whole session; it becomes dirty."""
        _check_key("session.session_id", session.session_id)
        session.tenant_id = tenant
        if not session.last_activity:
            session.last_activity = now_ns()
        await self._write(tenant, session)
        return session

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The local copy, or None."""
        _check_key("session_id", session_id)
        raw = await self.cache.get(session_key(tenant, session_id))
        return None if raw is None else SessionRecord.from_json(json.loads(raw))

    async def cache_copy(self, tenant: str, session: SessionRecord) -> None:
        """Keep a copy read through from central, without marking it dirty (central already has it)."""
        session.tenant_id = tenant
        await self.cache.set(session_key(tenant, session.session_id), _encode(session), self._ttl_ms)

    async def append(
        self,
        tenant: str,
        *,
        session_id: str,
        user_id: str,
        messages: list[Message],
        state_patch: JsonDict,
        base: SessionRecord | None,
    ) -> SessionRecord:
        """Append turns (and merge state) to ``base``, or to a new session when ``base`` is None."""
        _check_key("session_id", session_id)
        session = base or SessionRecord(session_id=session_id, user_id=user_id, tenant_id=tenant)
        stamp = now_ns()
        for message in messages:
            if not message.create_time:
                message.create_time = stamp
        session.messages.extend(messages)
        session.state.update(state_patch)
        session.last_activity = stamp
        await self._write(tenant, session)
        return session

    async def _write(self, tenant: str, session: SessionRecord) -> None:
        await self.cache.put_dirty(
            session_key(tenant, session.session_id),
            _encode(session),
            self._ttl_ms,
            dirty_hash(tenant),
            session.session_id,
        )
        self.on_dirty()

    async def dirty(self, tenant: str, limit: int) -> tuple[list[SessionRecord], dict[str, int]]:
        """Up to ``limit`` dirty sessions and the versions read (for ``clear``).

        A dirty session that expired from the cache before it could be synced
        cannot be sent any more; its version is returned so it is cleared, and
        the caller logs it.
        """
        versions = await self.cache.dirty_versions(dirty_hash(tenant), limit)
        ids = list(versions)
        raws = await self.cache.get_many([session_key(tenant, sid) for sid in ids])
        sessions = [SessionRecord.from_json(json.loads(raw)) for raw in raws if raw is not None]
        return sessions, versions

    async def clear(self, tenant: str, versions: dict[str, int]) -> int:
        """Clear dirty marks whose version did not change since ``dirty`` read them."""
        return await self.cache.clear_dirty(dirty_hash(tenant), versions)

    async def dirty_count(self, tenant: str) -> int:
        """Sessions waiting for the collector."""
        return await self.cache.dirty_count(dirty_hash(tenant))

    async def count(self, tenant: str) -> int:
        """Sessions held locally."""
        return await self.cache.count_keys(session_key(tenant, "*"))


def _encode(session: SessionRecord) -> bytes:
    return json.dumps(session.to_json(), separators=(",", ":")).encode()
