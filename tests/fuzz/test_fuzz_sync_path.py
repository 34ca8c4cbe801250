"""Fuzzing the path from an agent through the edge to central: what the edge accepted must sync.

An edge answers OK only for what central can store (issue 12: no poison items). Hypothesis drives
writes at a real in-process edge (real Redis, SQLite outbox, Qdrant Edge, cedarpy) linked to a real
in-process central (real PostgreSQL): decisions (``Authorize``), episodes, vectors and sessions
(``PutSession`` / ``AppendSessionMessages``) with hostile values — NUL characters, ids and Cedar uids
of a few thousand (multi-byte) characters, deep JSON, NUL keys, NaN/±inf numbers, zero vectors, and,
sent as raw frames, lone surrogates (which no protobuf library encodes). The edge may refuse a write
(INVALID_ARGUMENT), never answer INTERNAL/UNKNOWN; whatever it answered OK for must be at central
after ``FlushSync`` — which itself answers OK with nothing pending — with no dead letters and no
degraded channel at the edge.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from aeterna.memory.v1 import memory_pb2
from google.protobuf.message import Message
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeterna_shared import limits
from aeterna_shared.config import AeternaConfig
from central_svc.deps import build_deps
from central_svc.server import create_server as create_central
from central_svc.store.database import Database
from central_svc.store.urls import psycopg_conninfo
from edge_svc.deps import open_edge
from edge_svc.server import create_server as create_edge
from tests.fault.support import DIMENSION, report, soak
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(900)]

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
PLACEHOLDER = "\u2603\u2603\u2603"
"""Three snowmen (9 bytes of UTF-8): replaced in the encoded frame by three lone surrogates."""
SURROGATES = b"\xed\xa0\x80" * 3


@dataclass
class Linked:
    """An edge linked to a central, both in this process."""

    edge: edge_pb2_grpc.EdgeServiceAsyncStub
    channel: aio.Channel
    database_url: str


@pytest.fixture
async def linked(database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Linked]:
    central_config = AeternaConfig.model_validate(
        {
            "postgresql": {"url": database_url},
            "vectorDatabase": {"dimension": DIMENSION},
            "sync": {"listenPort": 0, "rateLimit": "100000/sec"},
            "telemetry": {"metricsPort": 0},
        }
    )
    database = Database(database_url, max_size=4)
    await database.open()
    deps = await build_deps(central_config, database)
    deps.listener.start()
    await deps.listener.connected.wait()
    central = create_central(central_config, deps)
    await central.start()
    central_port = central.port
    edge_config = AeternaConfig.model_validate(
        {
            "deploymentMode": "edge",
            "edge": {"agentId": "edge-path", "region": "eu-fuzz", "dataDir": str(tmp_path / "edge"), "listenPort": 0},
            "cache": {"url": redis_url},
            "sync": {
                "centralServer": {"url": f"http://127.0.0.1:{central_port}", "timeout": "5s", "maxRetries": 1},
                "sessionMemory": {"interval": "60s"},
                "batch": {"maxSize": 20},
                "rateLimit": "100000/sec",
            },
            "centralServer": {"healthCheck": {"interval": "200ms", "timeout": "1s", "failureThreshold": 3}},
            "vectorDatabase": {"dimension": DIMENSION},
            "telemetry": {"metricsPort": 0},
        }
    )
    resources = await open_edge(edge_config)
    await resources.node.start()
    server, port = create_edge(edge_config, resources.node)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Linked(edge_pb2_grpc.EdgeServiceStub(channel), channel, database_url)
    finally:
        await channel.close()
        await server.stop(0)
        await resources.node.shutdown(0.1)
        await resources.close()
        await central.stop(None)
        await deps.listener.stop()
        await database.close()


# --- values: every operation is either clean (must be accepted and synced) or hostile -----------------------


@dataclass(frozen=True)
class Values:
    """The strategies one operation draws its fields from."""

    text: st.SearchStrategy[str]
    ident: st.SearchStrategy[str]
    uid: st.SearchStrategy[str]
    role: st.SearchStrategy[str]
    json_object: st.SearchStrategy[dict[str, Any]]
    embedding: st.SearchStrategy[list[float]]


def _json(text: st.SearchStrategy[str], keys: st.SearchStrategy[str], number: st.SearchStrategy[float]) -> Any:
    return st.recursive(
        st.one_of(st.none(), st.booleans(), number, text),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
        max_leaves=12,
    )


def _nested(levels: st.SearchStrategy[int], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        value: Any = draw(leaf)
        for _ in range(draw(levels)):
            value = {"n": value}
        return {"deep": value}

    return build()


_CLEAN_TEXT = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.integers(min_value=1, max_value=3_000).map(lambda n: "t" * n),
    st.sampled_from(["é", "😀" * 60, "日本語"]),
)
_CLEAN_ID = st.one_of(
    st.uuids().map(str),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=limits.MAX_ID_BYTES // 4).map(lambda n: "😀" * n),  # at the limit, in bytes
)
_CLEAN_NUMBER = st.floats(allow_nan=False, allow_infinity=False)
CLEAN = Values(
    text=_CLEAN_TEXT,
    ident=_CLEAN_ID,
    uid=st.one_of(
        st.sampled_from(['User::"alice"', 'Action::"read"', 'Doc::"d"']),
        st.integers(min_value=1, max_value=2_000).map(lambda n: 'Doc::"' + "r" * n + '"'),
    ),
    role=st.sampled_from(["user", "agent", "tool", "r" * limits.MAX_NAME_BYTES]),
    json_object=st.one_of(
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: "\x00" not in k),
            _json(_CLEAN_TEXT, st.text(max_size=6).filter(lambda k: "\x00" not in k), _CLEAN_NUMBER),
            max_size=4,
        ),
        _nested(st.integers(limits.MAX_JSON_DEPTH - 6, limits.MAX_JSON_DEPTH - 3), st.integers(0, 9)),
    ),
    embedding=st.lists(st.floats(0.125, 1, width=32), min_size=DIMENSION, max_size=DIMENSION),
)

_HOSTILE_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "a\x00b", " ", PLACEHOLDER]),
    st.integers(min_value=257, max_value=3_000).map(lambda n: "r" * n),
    st.integers(min_value=60, max_value=800).map(lambda n: "😀é" * n),
)
_HOSTILE_NUMBER = st.one_of(_CLEAN_NUMBER, st.sampled_from([math.nan, math.inf, -math.inf]))
HOSTILE = Values(
    text=_HOSTILE_TEXT,
    ident=_HOSTILE_TEXT,
    uid=_HOSTILE_TEXT.map(lambda text: 'Doc::"' + text.replace('"', "") + '"'),
    role=st.sampled_from(["\x00", "r" * (limits.MAX_NAME_BYTES + 1), PLACEHOLDER]),
    json_object=st.one_of(
        st.dictionaries(
            st.one_of(st.text(max_size=6), st.sampled_from(["\x00", "k\x00", PLACEHOLDER])),
            _json(_HOSTILE_TEXT, st.sampled_from(["\x00", "k", PLACEHOLDER]), _HOSTILE_NUMBER),
            max_size=4,
        ),
        _nested(st.integers(limits.MAX_JSON_DEPTH - 2, limits.MAX_JSON_DEPTH + 6), st.integers(0, 9)),
    ),
    embedding=st.one_of(
        st.just([0.0] * DIMENSION),
        st.lists(st.sampled_from([0.5, math.nan, math.inf]), min_size=DIMENSION, max_size=DIMENSION),
    ),
)


def _struct_into(target: Any, value: dict[str, Any]) -> None:
    try:
        target.update(value)
    except (ValueError, TypeError):
        target.Clear()  # a value protobuf itself cannot hold (not our concern): sent without it


@st.composite
def _operation(draw: st.DrawFn) -> tuple[str, Message]:
    kind = draw(st.sampled_from(["authorize", "episode", "vectors", "put_session", "append"]))
    # A hostile operation still draws each field clean or hostile, so that one bad field hides among good ones.
    hostile = draw(st.booleans())

    def pick(name: str) -> Any:
        values = HOSTILE if hostile and draw(st.booleans()) else CLEAN
        return draw(getattr(values, name))

    if kind == "authorize":
        authorize = edge_pb2.AuthorizeRequest(principal=pick("uid"), action=pick("uid"), resource=pick("uid"))
        if draw(st.booleans()):
            _struct_into(authorize.context, pick("json_object"))
        request: Message = authorize
    elif kind == "episode":
        episode = memory_pb2.Episode(
            episode_id=draw(st.one_of(st.just(""), st.just(pick("ident")))),
            session_id=pick("text"),
            content=pick("text"),
        )
        if draw(st.booleans()):
            episode.embedding.extend(pick("embedding"))
        if draw(st.booleans()):
            _struct_into(episode.metadata, pick("json_object"))
        request = edge_pb2.AppendEpisodeRequest(episode=episode)
    elif kind == "vectors":
        vectors = []
        for index in range(draw(st.integers(1, 3))):
            vector = memory_pb2.Vector(vector_id=f"{pick('ident')[:200]}-{index}", values=pick("embedding"))
            if draw(st.booleans()):
                _struct_into(vector.payload, pick("json_object"))
            vectors.append(vector)
        request = edge_pb2.UpsertVectorsRequest(vectors=vectors)
    else:
        messages = [
            memory_pb2.SessionMessage(role=pick("role"), content=pick("text")) for _ in range(draw(st.integers(1, 3)))
        ]
        for message in messages:
            if draw(st.booleans()):
                _struct_into(message.metadata, pick("json_object"))
        session_id = pick("ident")
        if kind == "put_session":
            session = memory_pb2.Session(session_id=session_id, user_id=pick("ident"), messages=messages)
            if draw(st.booleans()):
                _struct_into(session.state, pick("json_object"))
            request = edge_pb2.PutSessionRequest(session=session)
        else:
            request = edge_pb2.AppendSessionMessagesRequest(session_id=session_id, messages=messages)
            if draw(st.booleans()):
                _struct_into(request.state_patch, pick("json_object"))
    return kind, request


# --- running --------------------------------------------------------------------------------------------

_METHODS: dict[str, tuple[str, type[Message]]] = {
    "authorize": ("Authorize", edge_pb2.AuthorizeResponse),
    "episode": ("AppendEpisode", edge_pb2.AppendEpisodeResponse),
    "vectors": ("UpsertVectors", edge_pb2.UpsertVectorsResponse),
    "put_session": ("PutSession", edge_pb2.PutSessionResponse),
    "append": ("AppendSessionMessages", edge_pb2.AppendSessionMessagesResponse),
}


@dataclass
class Accepted:
    """What the edge answered OK for."""

    decisions: set[str] = field(default_factory=set)
    episodes: set[str] = field(default_factory=set)
    vectors: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    codes: Counter[str] = field(default_factory=Counter)
    forbidden: list[str] = field(default_factory=list)


async def _send(linked: Linked, kind: str, request: Message, accepted: Accepted) -> None:
    method, reply_type = _METHODS[kind]
    frame = request.SerializeToString()
    if PLACEHOLDER.encode() in frame:
        frame = frame.replace(PLACEHOLDER.encode(), SURROGATES)  # lone surrogates: invalid UTF-8 on the wire
    call: aio.UnaryUnaryMultiCallable[bytes, bytes] = linked.channel.unary_unary(
        f"/aeterna.edge.v1.EdgeService/{method}", request_serializer=None, response_deserializer=None
    )
    try:
        raw = await call(frame, timeout=30)
    except aio.AioRpcError as error:
        accepted.codes[f"{kind}:{error.code().name}"] += 1
        if error.code() in FORBIDDEN:
            accepted.forbidden.append(f"{kind}: {error.code().name} {error.details()}")
        return
    accepted.codes[f"{kind}:OK"] += 1
    assert SURROGATES not in frame, f"{kind} with lone surrogates was answered OK"
    reply: Any = reply_type.FromString(raw)
    if kind == "authorize":
        accepted.decisions.add(reply.decision_id)
    elif kind == "episode":
        accepted.episodes.add(reply.episode_id)
    elif isinstance(request, edge_pb2.UpsertVectorsRequest):
        accepted.vectors.update(v.vector_id for v in request.vectors)
    else:
        accepted.sessions.add(reply.session.session_id)


def _at_central(database_url: str, table: str, column: str, ids: set[str]) -> set[str]:
    with psycopg.connect(psycopg_conninfo(database_url)) as connection:
        rows = connection.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", (list(ids),)).fetchall()
    return {str(row[0]) for row in rows}


async def test_what_the_edge_accepts_reaches_central(linked: Linked, request: pytest.FixtureRequest) -> None:
    examples = 1500 if soak(request.config) else 200
    operations: list[tuple[str, Message]] = []

    @settings(
        max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(operation=_operation())
    def collect(operation: tuple[str, Message]) -> None:
        operations.append(operation)

    collect()

    async def online() -> bool:
        status = await linked.edge.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=10)
        return status.link_state == edge_pb2.LINK_STATE_ONLINE

    await wait_until(online, "the edge is online")
    accepted = Accepted()
    for kind, message in operations:
        await _send(linked, kind, message, accepted)
    flushed = await linked.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=120)
    status = await linked.edge.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), timeout=10)
    missing = {
        "decisions": accepted.decisions
        - _at_central(linked.database_url, "decisions", "decision_id", accepted.decisions),
        "episodes": accepted.episodes - _at_central(linked.database_url, "episodes", "episode_id", accepted.episodes),
        "vectors": accepted.vectors - _at_central(linked.database_url, "vectors", "vector_id", accepted.vectors),
        "sessions": accepted.sessions
        - _at_central(linked.database_url, "session_memory", "session_id", accepted.sessions),
    }
    dead = {q.channel: q.dead_letters for q in status.queues if q.dead_letters}
    report(
        "FUZZ",
        "edge-to-central",
        writes=len(operations),
        accepted=len(accepted.decisions) + len(accepted.episodes) + len(accepted.vectors) + len(accepted.sessions),
        missing_at_central=sum(len(ids) for ids in missing.values()),
        dead_letters=sum(dead.values()),
        pending=flushed.items_pending,
        degraded=status.degraded,
        codes=dict(accepted.codes),
    )
    assert accepted.forbidden == [], accepted.forbidden[:10]
    assert flushed.items_pending == 0
    assert not status.degraded, [q.degraded_reason for q in status.queues if q.degraded]
    assert dead == {}, "central refused what the edge had accepted"
    assert all(not ids for ids in missing.values()), {k: sorted(v)[:5] for k, v in missing.items() if v}
    # The run exercised both sides: writes accepted (and synced) and writes refused before OK.
    assert sum(n for code, n in accepted.codes.items() if code.endswith(":OK")) > 0
    assert sum(n for code, n in accepted.codes.items() if code.endswith(":INVALID_ARGUMENT")) > 0
