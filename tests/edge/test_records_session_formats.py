"""Sessions stored by an earlier edge stay readable, and travel as the same items and the same wire bytes.

An edge upgraded in place finds what the code before it wrote: session
documents and pending-change hashes in Redis, session changes in the SQLite
outbox. The literals below are those bytes, as written before the session
stopped being decoded into records between Redis and the wire (issue 13, item
8; the shape map is in ``edge_svc.records``). The expected outbox items and
wire messages were produced by that earlier code from the same documents.
"""

from __future__ import annotations

import json

import redis

from edge_svc.api import codec
from edge_svc.deps import EdgeDeps
from edge_svc.memory import dirty_hash, pending_key, session_key
from edge_svc.records import Channel, Message, SessionRecord

TENANT = "default"

TURN_1 = (
    '{"id":"m1","role":"user","content":"hallo \\u00e9","t":1700000000000000001,'
    '"meta":{"k":"v","n":1.5,"l":[1,{"x":null}]}}'
)
TURN_2 = '{"id":"m2","role":"assistant","content":"hi","t":1700000000000000003,"meta":{}}'

# Session memory as the earlier code wrote it: document bytes, pending-change hash.
STORED = {
    "s-put": (
        '{"id":"s-put","user":"u","messages":[' + TURN_1 + '],"state":{"a":1,"nested":{"b":[true]}},'
        '"t":1700000000000000002,"tenant":"default"}',
        {"kind": "replace"},
    ),
    "s-app": (
        '{"id":"s-app","user":"u2","messages":[' + TURN_1 + "," + TURN_2 + '],"state":{"a":1,"b":2},'
        '"t":1700000000000000004,"tenant":"default","partial":true}',
        {"kind": "append", "from": "1", "patch": '{"b":2}'},
    ),
    # Written before pending-change hashes existed: sent whole.
    "s-old": ('{"id":"s-old","user":"","messages":[],"state":{},"t":0,"tenant":"default"}', {}),
}

# The outbox items the earlier code's collector made of them (an outbox row holds a JSON list of these).
ITEMS = {
    "s-put": (
        '{"id":"s-put","user":"u","messages":[' + TURN_1 + '],"state":{"a":1,"nested":{"b":[true]}},'
        '"t":1700000000000000002,"tenant":"default","kind":"replace"}'
    ),
    "s-app": (
        '{"id":"s-app","user":"u2","messages":[' + TURN_2 + '],"t":1700000000000000004,"tenant":"default",'
        '"kind":"append","partial":true,"patch":{"b":2}}'
    ),
    "s-old": '{"id":"s-old","user":"","messages":[],"state":{},"t":0,"tenant":"default","kind":"replace"}',
}

# What the earlier code sent for each item (``SerializeToString(deterministic=True)``, checksum included).
WIRE = {
    "s-put": (
        "0a05732d7075741201751a5b0a0475736572120868616c6c6f20c3a91a080880e2cfaa061001223b0a080a016b12031a01760a1f"
        "0a016c121a32180a0911000000000000f03f0a0b2a090a070a0178120208000a0e0a016e120911000000000000f83f2a026d3122"
        "2b0a0e0a0161120911000000000000f03f0a190a066e6573746564120f2a0d0a0b0a0162120632040a0220012a080880e2cfaa06"
        "10023240656133303732323831633337303262313831653062336335356239336362386532663932663738346365306631626330"
        "393237323063303661343961643836353a0764656661756c74"
    ),
    "s-app": (
        "0a05732d617070120275321a1d0a09617373697374616e74120268691a080880e2cfaa0610032a026d3222100a0e0a0162120911"
        "00000000000000402a080880e2cfaa06100432406530383037633930323936386234306464396135396561306234313236383832"
        "30363233353033653863373263633933303531613265316630613932343836353a0764656661756c74"
    ),
    "s-old": (
        "0a05732d6f6c64324063373839376464663965623064663764333662626430373365396138656637643530623433383338326461"
        "3664313161353033326365323533383435653333653a0764656661756c74"
    ),
}


def _compact(text: str) -> str:
    return json.dumps(json.loads(text), separators=(",", ":"))


def test_outbox_items_of_the_earlier_format_become_the_same_wire_messages() -> None:
    items = [json.loads(ITEMS[name]) for name in ("s-put", "s-app", "s-old")]
    sessions, appends = codec.session_changes_to_proto(items)
    assert [s.session_id for s in sessions] == ["s-put", "s-old"]
    assert [a.session_id for a in appends] == ["s-app"]
    for session in sessions:
        assert session.SerializeToString(deterministic=True).hex() == WIRE[session.session_id]
    for append in appends:
        assert append.SerializeToString(deterministic=True).hex() == WIRE[append.session_id]


def test_an_outbox_item_without_a_kind_is_a_whole_session() -> None:
    """Items from before changes had kinds: the session's document alone."""
    item = json.loads(ITEMS["s-put"])
    del item["kind"]
    [session], appends = codec.session_changes_to_proto([item])
    assert appends == []
    assert session.SerializeToString(deterministic=True).hex() == WIRE["s-put"]


def test_a_session_record_answers_with_the_same_message() -> None:
    """The response path (a record, as GetSession returns it) builds the same message as before."""
    record = SessionRecord.from_json(json.loads(STORED["s-put"][0]))
    assert codec.session_to_proto(record).SerializeToString(deterministic=True).hex() == WIRE["s-put"]


async def test_sessions_stored_by_the_earlier_code_are_read_collected_and_released(
    offline_edge: EdgeDeps, redis_url: str
) -> None:
    node = offline_edge.node
    client = redis.Redis.from_url(redis_url)
    try:
        for session_id, (document, pending) in STORED.items():
            client.set(session_key(TENANT, session_id), document.encode())
            for field, value in pending.items():
                client.hset(pending_key(TENANT, session_id), field, value)
            client.hincrby(dirty_hash(TENANT), session_id, 1)

        # Read as records, as before.
        put = await node.sessions.get(TENANT, "s-put")
        assert put is not None
        assert (put.user_id, put.state, put.last_activity) == (
            "u",
            {"a": 1, "nested": {"b": [True]}},
            1700000000000000002,
        )
        assert [(m.message_id, m.content, m.metadata) for m in put.messages] == [
            ("m1", "hallo \u00e9", {"k": "v", "n": 1.5, "l": [1, {"x": None}]})
        ]

        # Collected into the outbox as the very items the earlier code queued.
        assert await node.sync.collect_sessions() == 3
        [batch] = node.outbox.pending(Channel.SESSIONS, 10)
        assert {item["id"]: json.dumps(item, separators=(",", ":")) for item in batch.items} == {
            name: _compact(text) for name, text in ITEMS.items()
        }
        assert await node.sessions.dirty_count(TENANT) == 0

        # Acknowledged: the partial copy goes, the others get their TTL.
        assert await node.sessions.release(TENANT, batch.items) == 3
        assert client.exists(session_key(TENANT, "s-app")) == 0
        assert client.pttl(session_key(TENANT, "s-put")) > 0

        # An append to a stored document sends only the new turn, after the stored ones.
        await node.sessions.append(
            TENANT, session_id="s-put", user_id="u", messages=[Message("user", "more", message_id="m3")], state_patch={}
        )
        await node.sync.collect_sessions()
        [_, appended] = node.outbox.pending(Channel.SESSIONS, 10)
        [change] = appended.items
        assert (change["kind"], [m["id"] for m in change["messages"]], change["patch"]) == ("append", ["m3"], {})
        stored = await node.sessions.get(TENANT, "s-put")
        assert stored is not None
        assert [m.message_id for m in stored.messages] == ["m1", "m3"]
    finally:
        client.close()
