"""Two whole-session changes of one session, collected within a microsecond, both land at central, in order.

Found by the loss hunt (``tests/fault/test_loss_hunt.py``, example 11 of the CI
seed): a PutSession not synced yet, then ten concurrent appenders on that
session. The session stays a whole-session change (kind ``replace``) until it
is collected, the collector read it mid-burst (turns of 4 appenders) and could
not clear it (more had written since), and read it again (turns of 6). Each
append dated the session ``max(now, previous + 1 ns)``, so the two changes
were a few nanoseconds apart; central keeps microseconds and replaces a
session only with a strictly newer ``last_activity``, so it kept the first
and silently dropped the second: two acknowledged appends lost.

Here the edge's real session memory (real Redis) builds the two changes with
its clock standing still (the worst case of concurrent appenders), the edge's
codec turns them into requests, and a real central (real PostgreSQL) applies
them: every turn and state key must be there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aeterna.sync.v1 import sync_pb2
from google.protobuf import json_format

from aeterna_shared.wire.canonical import sign_batch
from edge_svc import memory as session_memory
from edge_svc.api import codec
from edge_svc.memory import SessionMemory
from edge_svc.records import JsonDict, Message, SessionRecord
from edge_svc.store.cache import RedisCache
from tests.central.conftest import Central, Edge

TENANT = "default"
FROZEN_NS = 1_780_000_000_123_456_789


@pytest.fixture
async def memory(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SessionMemory]:
    monkeypatch.setattr(session_memory, "now_ns", lambda: FROZEN_NS)  # the clock stands still
    cache = RedisCache(redis_url)
    try:
        yield SessionMemory(cache, timedelta(seconds=60))
    finally:
        await cache.close()


async def send(central: Central, edge: Edge, changes: list[JsonDict]) -> None:
    sessions, appends = codec.session_changes_to_proto(changes)
    request = sync_pb2.SyncSessionsRequest(header=edge.header("sessions"), sessions=sessions, appends=appends)
    sign_batch(request, edge.key)
    [ack] = await central.send_sessions(edge, request)
    assert (ack.status, ack.failed) == (sync_pb2.ACK_STATUS_ACCEPTED, 0)


async def test_a_second_whole_session_change_within_a_microsecond_is_not_dropped(
    central: Central, memory: SessionMemory
) -> None:
    edge = Edge("edge-order")
    await memory.put(TENANT, SessionRecord("s-order", "u", [Message("user", "put", message_id="m-put")]))
    await memory.append(
        TENANT, session_id="s-order", user_id="u", messages=[Message("user", "a", message_id="m-a")], state_patch={}
    )
    first = await memory.dirty(TENANT, 10)  # a whole session: the PutSession was not synced yet
    await memory.append(
        TENANT,
        session_id="s-order",
        user_id="u",
        messages=[Message("user", "b", message_id="m-b")],
        state_patch={"k": "v"},
    )
    assert await memory.clear(TENANT, first.versions) == 0  # written since it was read: it stays dirty
    second = await memory.dirty(TENANT, 10)
    assert [c["kind"] for c in first.changes + second.changes] == ["replace", "replace"]

    await send(central, edge, first.changes)
    await send(central, edge, second.changes)

    reply = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s-order"), metadata=edge.metadata)
    assert [m.message_id for m in reply.session.messages] == ["m-put", "m-a", "m-b"]
    assert json_format.MessageToDict(reply.session.state) == {"k": "v"}
    first_time, second_time = first.changes[0]["t"], second.changes[0]["t"]
    assert second_time // 1000 > first_time // 1000  # newer in microseconds, the unit central compares


async def test_a_put_after_appends_within_a_microsecond_replaces_the_session_at_central(
    central: Central, memory: SessionMemory
) -> None:
    """The same with a PutSession last: it is dated after the appends before it, so central takes it."""
    edge = Edge("edge-order-put")
    await memory.put(TENANT, SessionRecord("s-put", "u", [Message("user", "one", message_id="m-1")]))
    await memory.append(
        TENANT, session_id="s-put", user_id="u", messages=[Message("user", "two", message_id="m-2")], state_patch={}
    )
    first = await memory.dirty(TENANT, 10)
    await memory.put(TENANT, SessionRecord("s-put", "u", [Message("user", "new", message_id="m-new")]))
    assert await memory.clear(TENANT, first.versions) == 0
    second = await memory.dirty(TENANT, 10)

    await send(central, edge, first.changes)
    await send(central, edge, second.changes)

    reply = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id="s-put"), metadata=edge.metadata)
    assert [m.message_id for m in reply.session.messages] == ["m-new"]
