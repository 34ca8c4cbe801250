"""Session appends merge at central (real gRPC, real PostgreSQL): every turn once, in order, from any edge.

Before appends existed, an edge that appended to a session it did not hold
(offline) sent a session with only the new turns, and its newer timestamp
replaced the whole conversation at central. These tests pin the merge: the
earlier turns stay, each turn is stored once by message id, state keys merge,
and appends from two edges at the same moment both land.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2

from aeterna_shared.wire.canonical import session_checksum, sign_batch
from tests.central.conftest import Central, Edge, make_session, now_stamp


def append(session_id: str, *ids: str, patch: dict[str, Any] | None = None) -> sync_pb2.SessionAppend:
    """A SessionAppend with one turn per id (the id is also the text) and a correct checksum."""
    change = sync_pb2.SessionAppend(
        session_id=session_id,
        user_id="user-1",
        messages=[memory_pb2.SessionMessage(role="user", content=f"text {i}", message_id=i) for i in ids],
        last_activity_time=now_stamp(),
    )
    if patch:
        change.state_patch.update(patch)
    change.checksum = session_checksum(change)
    return change


def batch(edge: Edge, *appends: sync_pb2.SessionAppend) -> sync_pb2.SyncSessionsRequest:
    request = sync_pb2.SyncSessionsRequest(header=edge.header("sessions"), appends=appends)
    sign_batch(request, edge.key)
    return request


async def turns(central: Central, edge: Edge, session_id: str) -> tuple[list[str], dict[str, object]]:
    reply = await central.sync.GetSession(sync_pb2.GetSessionRequest(session_id=session_id), metadata=edge.metadata)
    session = reply.session
    assert session.checksum == session_checksum(session), "central's merged session carries a fresh checksum"
    return [m.message_id or m.content for m in session.messages], dict(session.state)


async def test_append_keeps_the_earlier_turns_and_adds_each_new_one_once(central: Central) -> None:
    edge = Edge("edge-a")
    whole = make_session("s1", text="first turn")
    whole.checksum = session_checksum(whole)
    await central.send_sessions(edge, edge.sessions([whole]))
    [ack] = await central.send_sessions(edge, batch(edge, append("s1", "m2", "m3", patch={"mood": "calm"})))
    assert (ack.status, ack.processed, ack.failed) == (sync_pb2.ACK_STATUS_ACCEPTED, 1, 0)
    # The edge resends m3 (its dirty mark changed while the batch was in flight) together with m4.
    await central.send_sessions(edge, batch(edge, append("s1", "m3", "m4", patch={"mood": "happy"})))
    ids, state = await turns(central, edge, "s1")
    assert ids == ["first turn", "m2", "m3", "m4"]
    assert state == {"step": 1.0, "mood": "happy"}


async def test_append_to_a_session_central_does_not_hold_starts_it(central: Central) -> None:
    edge = Edge("edge-a")
    [ack] = await central.send_sessions(edge, batch(edge, append("new", "a", "b")))
    assert ack.status == sync_pb2.ACK_STATUS_ACCEPTED
    assert (await turns(central, edge, "new"))[0] == ["a", "b"]


async def test_appends_from_two_edges_at_the_same_moment_all_land(central: Central) -> None:
    first, second = Edge("edge-a"), Edge("edge-b")
    for trial in range(10):
        sid = f"shared-{trial}"
        await asyncio.gather(
            central.send_sessions(first, batch(first, append(sid, *(f"a{trial}-{n}" for n in range(5))))),
            central.send_sessions(second, batch(second, append(sid, *(f"b{trial}-{n}" for n in range(5))))),
        )
        ids, _ = await turns(central, first, sid)
        assert sorted(ids) == sorted([f"a{trial}-{n}" for n in range(5)] + [f"b{trial}-{n}" for n in range(5)])
        # Each edge's turns keep their order.
        assert [i for i in ids if i.startswith("a")] == [f"a{trial}-{n}" for n in range(5)]
        assert [i for i in ids if i.startswith("b")] == [f"b{trial}-{n}" for n in range(5)]


async def test_append_to_another_tenants_session_fails_alone(central: Central) -> None:
    owner, intruder = Edge("edge-a", tenant_id="t1"), Edge("edge-b", tenant_id="t2")
    await central.send_sessions(owner, batch(owner, append("s1", "mine")))
    [ack] = await central.send_sessions(intruder, batch(intruder, append("s1", "stolen"), append("s2", "own")))
    assert (ack.status, ack.processed, ack.failed) == (sync_pb2.ACK_STATUS_PARTIAL, 1, 1)
    assert [(f.item_id, f.reason) for f in ack.failures] == [("s1", "SESSION_OWNED_BY_OTHER_TENANT")]
    assert (await turns(central, owner, "s1"))[0] == ["mine"]
    assert (await turns(central, intruder, "s2"))[0] == ["own"]


@pytest.mark.parametrize("damage", ["no message id", "checksum"])
async def test_a_bad_append_fails_alone(central: Central, damage: str) -> None:
    edge = Edge("edge-a")
    bad = append("bad", "x")
    if damage == "no message id":
        bad.messages[0].message_id = ""
        bad.checksum = session_checksum(bad)
    else:
        bad.messages[0].content = "changed after the checksum"
    [ack] = await central.send_sessions(edge, batch(edge, bad, append("good", "y")))
    assert (ack.processed, ack.failed) == (1, 1)
    assert ack.failures[0].item_id == "bad"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await turns(central, edge, "bad")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sessions_and_appends_central_cannot_store_fail_alone(central: Central) -> None:
    """The same limits the edge applies before answering (aeterna_shared.limits), judged per item."""
    edge = Edge("edge-a")
    whole = make_session("nul-session", text="a\x00b")
    whole.checksum = session_checksum(whole)
    request = edge.sessions([whole, make_session("fine")])
    request.appends.extend([append("nul-append", "m1"), append("fine-append", "m2")])
    request.appends[0].messages[0].content = "c\x00d"
    request.appends[0].checksum = session_checksum(request.appends[0])
    sign_batch(request, edge.key)
    [ack] = await central.send_sessions(edge, request)
    assert (ack.processed, ack.failed) == (2, 2)
    failures = {f.item_id: (f.reason, f.message) for f in ack.failures}
    assert failures["nul-session"][0] == failures["nul-append"][0] == "INVALID_ITEM"
    assert failures["nul-session"][1].startswith("sessions[0].messages[0].content")
    assert failures["nul-append"][1].startswith("appends[0].messages[0].content")
    assert (await turns(central, edge, "fine-append"))[0] == ["m2"]
