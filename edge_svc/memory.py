"""Working and session memory on top of the ``Cache`` port.

Keys are prefixed with the caller's tenant, so that one tenant can never name
another's data. Working memory is a plain value with a TTL and is never synced.
Session memory is a JSON document per session. Every write records what
changed since the last sync and bumps the session's version in the tenant's
dirty hash, all in one transaction; the session collector reads those. A
session with unsynced changes has no TTL, so it can never expire before
central has it; its TTL (``cache.layers.session.ttl``) starts once it is
synced. Session memory lives in a store that never evicts (see
``edge_svc.store.cache``); working memory, in its own, is the only layer that
may be evicted.

Every write of a session moves its ``last_activity`` forward by at least
``LAST_ACTIVITY_STEP_NS`` (one microsecond), whatever the clock says. Central
replaces a whole session only with a strictly newer ``last_activity``, and it
keeps microseconds (PostgreSQL's ``timestamptz``): two whole-session changes
of one session collected a few nanoseconds apart (concurrent appenders after a
PutSession that was not synced yet) would otherwise look equally old there,
and central would keep the first and drop the second, with the turns only it
held (found by the loss hunt, ``tests/fault/test_loss_hunt.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from aeterna_shared.errors import InvalidArgument
from edge_svc import trace_context
from edge_svc.ports import Cache, Mutation
from edge_svc.records import ChangeKind, JsonDict, Message, SessionRecord, now_ns

MAX_KEY_BYTES = 512

LAST_ACTIVITY_STEP_NS = 1_000
"""Least step of a session's ``last_activity`` between two writes: central compares microseconds."""


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
    max_ttl: timedelta = timedelta(seconds=5)
    """The longest TTL a caller may ask for (``cache.layers.working.maxTtl``)."""
    cap_ttl: bool = False
    """Cap a longer TTL to ``max_ttl`` instead of refusing it (``ttlOverflow: cap``)."""

    async def set(self, tenant: str, key: str, value: object, ttl: timedelta | None) -> int:
        """Store ``value`` (any JSON value); returns its expiry time in nanoseconds."""
        _check_key("key", key)
        if ttl is not None and ttl > self.max_ttl:
            if not self.cap_ttl:
                raise InvalidArgument.for_field(
                    "ttl",
                    f"working memory lives at most {self.max_ttl.total_seconds():g} s "
                    "(cache.layers.working.maxTtl); keep longer-lived data in session memory",
                    reason="TTL_TOO_LONG",
                )
            ttl = self.max_ttl
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


def pending_key(tenant: str, session_id: str) -> str:
    """Redis hash of a session's changes since its last sync (kind, first unsent turn, state patch)."""
    return f"aeterna:{tenant}:pending:{session_id}"


@dataclass(frozen=True)
class DirtySessions:
    """What one collection read: the changes to send, the versions to clear, and the dirty ids with no session."""

    changes: list[JsonDict]
    """Session changes as the outbox holds them (``edge_svc.records``: the stored document, cut to what changed)."""
    versions: dict[str, int]
    missing: list[str]


@dataclass
class SessionMemory:
    """Sessions held at the edge; every write records what changed since the last sync, atomically.

    Each session is a JSON document (the whole local view, marked
    ``partial`` when it was started offline without central's earlier turns)
    plus a small pending-change hash: ``kind`` (``replace`` after a
    PutSession, else ``append``), ``from`` (index of the first turn not yet
    sent), ``patch`` (state keys set since) and ``trace`` (the writes' W3C trace
    contexts, ``edge_svc.trace_context``). The collector turns these into
    session changes without decoding the document into a record
    (``edge_svc.records``): the whole of it, or only the new turns and keys,
    which central merges. Both keys and the dirty mark change in one
    transaction, retried when another writer got there first. The document
    keeps no TTL until central acknowledged its last change (``release``).
    """

    cache: Cache
    ttl: timedelta
    on_dirty: Callable[[], None] = lambda: None
    """Called after every write so the collector can flush early when a batch fills up."""

    @property
    def _ttl_ms(self) -> int:
        return max(int(self.ttl.total_seconds() * 1000), 1)

    async def put(self, tenant: str, session: SessionRecord) -> SessionRecord:
        """Write a whole session (it replaces central's copy when it reaches central)."""
        _check_key("session.session_id", session.session_id)
        session.tenant_id = tenant
        stamped = not session.last_activity  # the edge dates it: after every earlier write of this session
        if stamped:
            session.last_activity = now_ns()
        _stamp(session.messages, session.last_activity)
        encoded = _encode(session)
        now = session.last_activity

        def replace(current: bytes | None, _pending: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            session.last_activity = now
            if stamped and current is not None:
                held = int(json.loads(current).get("t", 0))
                if now < held + LAST_ACTIVITY_STEP_NS:
                    session.last_activity = held + LAST_ACTIVITY_STEP_NS
                    return _encode(session), {"kind": ChangeKind.REPLACE.value}
            return encoded, {"kind": ChangeKind.REPLACE.value}

        await self._update(tenant, session.session_id, replace)
        return session

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The local copy, or None."""
        _check_key("session_id", session_id)
        raw = await self.cache.get(session_key(tenant, session_id))
        return None if raw is None else _decode_document(raw)[0]

    async def cache_copy(self, tenant: str, session: SessionRecord) -> None:
        """Keep a copy read through from central, never over a local one (central already has it)."""
        session.tenant_id = tenant
        await self.cache.set_if_absent(session_key(tenant, session.session_id), _encode(session), self._ttl_ms)

    async def append(
        self,
        tenant: str,
        *,
        session_id: str,
        user_id: str,
        messages: list[Message],
        state_patch: JsonDict,
        base: SessionRecord | None = None,
        partial: bool = False,
    ) -> SessionRecord:
        """Append turns (and merge state keys) atomically, whatever else writes the session meanwhile.

        When the edge does not hold the session, it starts from ``base`` (read
        through from central) or empty; ``partial`` says that central may hold
        earlier turns the edge has not seen (an offline append), so the local
        copy is dropped once central has merged it.
        """
        _check_key("session_id", session_id)
        stamp = now_ns()
        _stamp(messages, stamp)
        result: list[SessionRecord] = []

        def add(current: bytes | None, pending: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            if current is not None:
                session, started_partial = _decode_document(current)
            else:
                # A fresh copy each attempt: an attempt that lost the race must leave ``base`` untouched.
                session = SessionRecord.from_json(base.to_json()) if base else SessionRecord(session_id, user_id)
                session.tenant_id = tenant
                started_partial = base is None and partial
            if not pending:
                pending = {"kind": ChangeKind.APPEND.value, "from": str(len(session.messages))}
            else:
                pending = dict(pending)
            session.messages.extend(messages)
            session.state.update(state_patch)
            session.last_activity = max(stamp, session.last_activity + LAST_ACTIVITY_STEP_NS)
            if pending["kind"] == ChangeKind.APPEND.value and state_patch:
                patch = json.loads(pending.get("patch", "{}"))
                patch.update(state_patch)
                pending["patch"] = json.dumps(patch, separators=(",", ":"))
            result[:] = [session]
            return _encode(session, partial=started_partial), pending

        await self._update(tenant, session_id, add)
        return result[0]

    async def _update(self, tenant: str, session_id: str, mutate: Mutation) -> None:
        traceparent = trace_context.current_traceparent()
        if traceparent is not None:
            untraced = mutate

            def mutate(current: bytes | None, pending: dict[str, str]) -> tuple[bytes, dict[str, str]]:
                # The write's trace context rides with its pending change to the sync (``edge_svc.trace_context``).
                value, changed = untraced(current, pending)
                field = trace_context.PENDING_FIELD
                return value, {**changed, field: trace_context.merged(pending.get(field), traceparent)}

        await self.cache.update(
            session_key(tenant, session_id), pending_key(tenant, session_id), dirty_hash(tenant), session_id, mutate
        )
        self.on_dirty()

    async def dirty(self, tenant: str, limit: int) -> DirtySessions:
        """Up to ``limit`` changed sessions as changes to send, with the versions read (for ``clear``).

        With a session store that never evicts and sessions that keep no TTL
        while dirty, a dirty id without its session means the store lost data
        (for example an external store restarted without persistence): such
        ids are returned in ``missing`` so the caller can count and report them.
        """
        versions = await self.cache.dirty_versions(dirty_hash(tenant), limit)
        ids = list(versions)
        raws = await self.cache.get_many([session_key(tenant, sid) for sid in ids])
        pendings = await self.cache.hashes([pending_key(tenant, sid) for sid in ids])
        changes: list[JsonDict] = []
        missing: list[str] = []
        for session_id, raw, pending in zip(ids, raws, pendings, strict=True):
            if raw is None:
                missing.append(session_id)
                continue
            changes.append(_change(json.loads(raw), pending))
        return DirtySessions(changes, versions, missing)

    async def clear(self, tenant: str, versions: dict[str, int]) -> int:
        """Clear dirty marks (and pending changes) whose version did not change since ``dirty`` read them."""
        entries = [(sid, version, pending_key(tenant, sid)) for sid, version in versions.items()]
        return await self.cache.clear_dirty(dirty_hash(tenant), entries)

    async def release(self, tenant: str, acknowledged: Sequence[JsonDict]) -> int:
        """Central acknowledged these session changes (outbox items): the sessions not changed since may
        expire (partial ones go now)."""
        entries = [(str(c["id"]), session_key(tenant, str(c["id"])), bool(c.get("partial"))) for c in acknowledged]
        return await self.cache.release(dirty_hash(tenant), entries, self._ttl_ms)

    async def dirty_count(self, tenant: str) -> int:
        """Sessions waiting for the collector."""
        return await self.cache.dirty_count(dirty_hash(tenant))

    async def count(self, tenant: str) -> int:
        """Sessions held locally."""
        return await self.cache.count_keys(session_key(tenant, "*"))


def _change(document: JsonDict, pending: dict[str, str]) -> JsonDict:
    """The session change to send for a dirty session's stored document: the whole of it (kind ``replace``),
    or its turns since ``from`` and the state keys set since (kind ``append``, with ``partial`` when the
    copy was started offline). Keys keep the document's order, so the item is the bytes it always was."""
    partial = bool(document.pop("partial", False))
    # The writes' trace contexts (``edge_svc.trace_context``), only when they carried any: an item
    # without them is the bytes it always was.
    contexts = pending.get(trace_context.PENDING_FIELD)
    traced = {trace_context.PENDING_FIELD: contexts} if contexts else {}
    if pending.get("kind") != ChangeKind.APPEND.value:
        # A PutSession since the last sync, or a session written before pending hashes existed.
        return {**document, "kind": ChangeKind.REPLACE.value, **traced}
    change = {key: value for key, value in document.items() if key != "state"}
    change["messages"] = document.get("messages", [])[int(pending.get("from", "0")) :]
    change["kind"] = ChangeKind.APPEND.value
    if partial:
        change["partial"] = True
    change["patch"] = json.loads(pending.get("patch", "{}"))
    return {**change, **traced}


def _stamp(messages: list[Message], stamp: int) -> None:
    """Give each turn an id and a time when the agent left them out."""
    for message in messages:
        if not message.message_id:
            message.message_id = str(uuid.uuid4())
        if not message.create_time:
            message.create_time = stamp


def _encode(session: SessionRecord, *, partial: bool = False) -> bytes:
    document = session.to_json()
    if partial:
        document["partial"] = True
    return json.dumps(document, separators=(",", ":")).encode()


def _decode_document(raw: bytes) -> tuple[SessionRecord, bool]:
    """(the session, whether it is a partial copy)."""
    document = json.loads(raw)
    return SessionRecord.from_json(document), bool(document.get("partial"))
