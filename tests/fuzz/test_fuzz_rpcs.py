"""Fuzzing every RPC of EdgeService, SyncService and PolicyService.

Two generators: Hypothesis builds structurally valid messages with hostile values (random fields,
huge strings, NUL characters, ids and Cedar uids of a few thousand (multi-byte) characters, deep
``state`` structures with NUL keys and NaN/inf numbers, NaN/inf vectors, wrong dimensions, negative
limits, bad timestamps, Cedar schemas that are no schema), signing sync batches half of the time so
they reach validation; byte mutation sends
frames a client library would never produce (truncated, bit-flipped, garbage, invalid UTF-8) through
a generic channel method. Invariant for every input: the status is never ``INTERNAL``/``UNKNOWN``;
for a rejected input the stored data is unchanged; after the run the server still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import prometheus_client
import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.policy.v1 import policy_pb2
from aeterna.sync.v1 import sync_pb2
from google.protobuf import descriptor, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_shared.wire.canonical import sign_batch
from central_svc.store.urls import psycopg_conninfo
from tests.fault.support import report, soak
from tests.fuzz.conftest import Target

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(900)]

METADATA = (("x-aeterna-agent-id", "edge-fuzz"), ("x-aeterna-tenant-id", "default"))
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
LAST_DETAILS: list[str] = []
CLIENT_TRANSPORT_INTERNAL = "INTERNAL Internal error from Core"


def _methods(service: descriptor.ServiceDescriptor) -> list[descriptor.MethodDescriptor]:
    return list(service.methods)


EDGE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
SYNC = sync_pb2.DESCRIPTOR.services_by_name["SyncService"]
POLICY = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]

# --- generic message strategies from descriptors ---------------------------------------------------

_HUGE = st.integers(min_value=70_000, max_value=300_000).map(lambda n: "x" * n)
# Longer than an id or a Cedar uid may be: central's indexes hold at most 2,704 bytes a row.
_LONG = st.one_of(
    st.integers(min_value=257, max_value=6_000).map(lambda n: 'Doc::"' + "r" * n + '"'),
    st.integers(min_value=100, max_value=2_000).map(lambda n: "é😀" * n),
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "../../etc", "a" * 300, "\x00", "a\x00b", 'Doc::"\x00"', "é", "default"]),
    _HUGE,
    _LONG,
)
# What PublishPolicies gets as a schema: JSON that is no object, objects that are no Cedar schema, non-JSON.
_SCHEMA = st.one_of(
    st.sampled_from(["[]", "5", '"text"', "null", "true", "{}", '{"": {}}', '{"NS": {"entityTypes": 5}}', "{not"]),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=10,
    ).map(json.dumps),
)
_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308])
)
_INT = st.one_of(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.sampled_from([-1, 0, 1, 2**31 - 1]))


def _deep_value(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False),
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.text(max_size=20),
        st.sampled_from(["\x00", "a\x00b"]),
    )
    keys = st.one_of(st.text(max_size=8), st.sampled_from(["\x00", "k\x00"]))
    return st.recursive(
        leaf,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
        max_leaves=depth,
    )


def _very_deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


@st.composite
def message(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int = 0) -> Message:
    cls = message_factory.GetMessageClass(desc)
    msg = cls()
    if desc.full_name == "google.protobuf.Struct":
        choice = draw(st.integers(0, 2))
        data = (
            _very_deep(draw(st.integers(20, 120)))
            if choice == 0
            else draw(st.dictionaries(st.text(max_size=10), _deep_value(30), max_size=4))
        )
        struct = struct_pb2.Struct()
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            struct.update(data)
        return struct
    if desc.full_name == "google.protobuf.Timestamp":
        return timestamp_pb2.Timestamp(
            seconds=draw(st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([0, -62135596801, 253402300800]))),
            nanos=draw(st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 2_000_000_000]))),
        )
    for field in desc.fields:
        if depth > 4 or not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        count = (
            draw(st.integers(0, 12 if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE else 3)) if repeated else 1
        )
        for _ in range(count):
            value = _field_value(draw, field, depth)
            if value is None:
                continue
            try:
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    continue
                if repeated:
                    target = getattr(msg, field.name)
                    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
                elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    getattr(msg, field.name).CopyFrom(value)
                else:
                    setattr(msg, field.name, value)
            except (ValueError, TypeError, OverflowError):
                pass
    return msg


def _field_value(draw: st.DrawFn, field: descriptor.FieldDescriptor, depth: int) -> Any:
    t = field.type
    F = descriptor.FieldDescriptor
    if t == F.TYPE_MESSAGE:
        assert field.message_type is not None  # a message field names its type
        return draw(message(field.message_type, depth + 1))
    if t == F.TYPE_STRING:
        return draw(_SCHEMA if field.name == "schema_json" else _TEXT)
    if t == F.TYPE_BYTES:
        return draw(st.binary(max_size=64))
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return draw(_FLOAT)
    if t == F.TYPE_BOOL:
        return draw(st.booleans())
    if t == F.TYPE_ENUM:
        assert field.enum_type is not None  # an enum field names its type
        return draw(st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99)))
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return draw(st.integers(0, 2**32 - 1))
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return draw(st.integers(0, 2**64 - 1))
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return draw(st.integers(-(2**63), 2**63 - 1))
    return draw(_INT)


# --- digests of stored data -------------------------------------------------------------------------

_TABLES = (
    "session_memory",
    "sync_batches",
    "sync_checkpoints",
    "decisions",
    "conflicts",
    "episodes",
    "vectors",
    "policy_bundles",
    "edges",
)


def central_digest(conninfo: str) -> str:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        parts = []
        for table in _TABLES:
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
            parts.append(f"{table}:{row}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def write_horizon(conninfo: str) -> int:
    """The next transaction id PostgreSQL would assign: it moves only when some transaction wrote.

    Comparing it before and after an input is a cheap first check; only when it
    moved (a write, possibly rolled back) is the full table digest compared.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def _conninfo(database_url: str) -> str:
    return psycopg_conninfo(database_url)


# --- calling -----------------------------------------------------------------------------------------


def _path(service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


async def call_raw(
    channel: aio.Channel,
    service: descriptor.ServiceDescriptor,
    method: descriptor.MethodDescriptor,
    frames: list[bytes],
) -> grpc.StatusCode:
    """Send raw frames; returns the final status code."""
    path = _path(service, method)
    try:
        if method.client_streaming:
            # Frames are written one by one and the final status is read from the call: when the
            # server ends a stream early (as it must for garbage), a client still writing in the
            # background reports its own failed write ("Internal error from Core"), not the
            # server's status, which is what this test judges.
            stream: aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                path, request_serializer=None, response_deserializer=None
            )
            call = stream(metadata=METADATA, timeout=15)
            for frame in frames:
                try:
                    await call.write(frame)
                except (aio.AioRpcError, asyncio.InvalidStateError):
                    break
            with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                await call.done_writing()
            with contextlib.suppress(aio.AioRpcError):
                async for _ in call:
                    pass
            code = await call.code()
            if code in FORBIDDEN:
                LAST_DETAILS.append(f"{path}: {code.name} {await call.details()}")
            return code
        if method.server_streaming:
            unary_stream: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                path, request_serializer=None, response_deserializer=None
            )
            # WatchPolicies waits for new versions forever: a short deadline ends it.
            call2 = unary_stream(frames[0], metadata=METADATA, timeout=0.1)
            async for _ in call2:
                break
            call2.cancel()
        else:
            unary: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                path, request_serializer=None, response_deserializer=None
            )
            await unary(frames[0], metadata=METADATA, timeout=15)
    except aio.AioRpcError as error:
        if error.code() in FORBIDDEN:
            LAST_DETAILS.append(f"{path}: {error.code().name} {error.details()}")
        return error.code()
    return grpc.StatusCode.OK


def _prepare(msg: Message, sign: bool) -> Message:
    if sign and msg.DESCRIPTOR.fields_by_name.get("header") is not None:
        # A hostile message may not even be signable; it is then sent unsigned.
        with contextlib.suppress(Exception):
            # Any message with a header: one sign_batch cannot sign raises, and is sent unsigned.
            sign_batch(msg, DEVELOPMENT_KEY)  # type: ignore[arg-type]
    return msg


class Tally:
    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.inputs = 0
        self.bad: list[str] = []

    def add(self, where: str, code: grpc.StatusCode, detail: str = "") -> None:
        self.inputs += 1
        self.codes[code.name] += 1
        if code in FORBIDDEN and not (LAST_DETAILS and LAST_DETAILS[-1].endswith(CLIENT_TRANSPORT_INTERNAL)):
            self.bad.append(f"{where}: {code.name} {detail[:200]}")


def server_side_forbidden() -> float:
    """INTERNAL/UNKNOWN answers the servers themselves gave, from their own RPC metrics.

    A streaming client that is still writing when the server ends the call can
    report INTERNAL "Internal error from Core" for its own failed write, whatever
    status the server sent. Those are not counted as server failures; instead the
    servers' own count of INTERNAL/UNKNOWN answers must be zero.
    """
    total = 0.0
    for metric in prometheus_client.REGISTRY.collect():
        if metric.name == "grpc_server_handled":
            total += sum(
                sample.value
                for sample in metric.samples
                if sample.name.endswith("_total") and sample.labels.get("grpc_code") in {"Internal", "Unknown"}
            )
    return total


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    b = bytearray(data)
    if kind == 0 and b:
        return bytes(b[: rng.randrange(len(b))])  # truncated
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 256))  # garbage
    if kind == 2 and b:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:
        # A string field (tag 1, wire type 2) holding invalid UTF-8.
        bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80" * 5])
        return bytes([0x0A, len(bad)]) + bad + bytes(b)
    if kind == 4:
        # A length prefix far larger than the frame.
        return bytes([0x0A, 0xFF, 0xFF, 0xFF, 0x0F]) + bytes(b[:20])
    if kind == 5 and b:
        pos = rng.randrange(len(b) + 1)
        return bytes(b[:pos]) + rng.randbytes(rng.randrange(1, 16)) + bytes(b[pos:])
    return bytes(b) * rng.randrange(1, 4)


def _seed(service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, rng: random.Random) -> bytes:
    """A plausible encoded request for the method (valid-looking ids, small vectors, a signed header)."""
    msg = message_factory.GetMessageClass(method.input_type)()
    for field in method.input_type.fields:
        if field.type == descriptor.FieldDescriptor.TYPE_STRING and not field.is_repeated:
            setattr(msg, field.name, f"fuzz-{rng.randrange(1000)}")
    _prepare(msg, True)
    return msg.SerializeToString()


async def _check_still_serves(edge: Target, central: Target) -> None:
    status: aio.UnaryUnaryMultiCallable[bytes, bytes] = edge.channel.unary_unary(
        _path(EDGE, EDGE.methods_by_name["GetEdgeStatus"]), request_serializer=None, response_deserializer=None
    )
    await status(b"", timeout=10)
    checkpoint: aio.UnaryUnaryMultiCallable[bytes, bytes] = central.channel.unary_unary(
        _path(SYNC, SYNC.methods_by_name["GetSyncCheckpoint"]), request_serializer=None, response_deserializer=None
    )
    await checkpoint(b"", metadata=METADATA, timeout=10)


async def test_byte_mutation_every_rpc(
    edge_target: Target, central_target: Target, request: pytest.FixtureRequest
) -> None:
    rounds = 400 if soak(request.config) else 120
    rng = random.Random(8080)
    tally = Tally()
    server_before = server_side_forbidden()
    assert central_target.database_url is not None
    conninfo = _conninfo(central_target.database_url)
    before = central_digest(conninfo)
    for target, services in ((edge_target, [EDGE]), (central_target, [SYNC, POLICY])):
        for service in services:
            for method in _methods(service):
                seed = _seed(service, method, rng)
                for _ in range(rounds):
                    frames = [_mutate(seed, rng) for _ in range(rng.randrange(1, 4))]
                    code = await call_raw(target.channel, service, method, frames)
                    tally.add(f"{service.name}.{method.name}", code, repr(frames[0][:40]))
    after = central_digest(conninfo)
    await _check_still_serves(edge_target, central_target)
    report(
        "FUZZ",
        "byte-mutation",
        inputs=tally.inputs,
        internal_or_unknown=len(tally.bad),
        server_internal_or_unknown=int(server_side_forbidden() - server_before),
        codes=dict(tally.codes),
    )
    assert tally.bad == [], LAST_DETAILS[:10]
    assert server_side_forbidden() == server_before, "a server answered INTERNAL or UNKNOWN"
    # Mutated frames may still decode into acceptable requests only where no signature is needed;
    # central's stored data must not change for them unless a call was answered OK.
    if tally.codes.get("OK", 0) == 0:
        assert before == after, "central's stored data changed although every input was rejected"


def _hypothesis_test(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, examples: int
) -> Callable[[Target, str | None, Tally], Awaitable[None]]:
    async def run(target: Target, conninfo: str | None, tally: Tally) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(msg=message(method.input_type), sign=st.booleans(), count=st.integers(1, 3))
        def inner(msg: Message, sign: bool, count: int) -> None:
            frames = [_prepare(msg, sign).SerializeToString()] * count
            collected.append(frames)

        collected: list[list[bytes]] = []
        inner()
        digest = central_digest(conninfo) if conninfo is not None else None
        for frames in collected:
            horizon = write_horizon(conninfo) if conninfo is not None else 0
            code = await call_raw(target.channel, service, method, frames)
            tally.add(f"{service.name}.{method.name}", code, repr(frames[0][:60]))
            if conninfo is None or write_horizon(conninfo) == horizon:
                continue
            after = central_digest(conninfo)
            if code != grpc.StatusCode.OK and method.name not in ("SearchVectors",) and after != digest:
                tally.bad.append(f"{service.name}.{method.name}: {code.name} but stored data changed")
            digest = after

    return run


async def test_hypothesis_every_rpc(
    edge_target: Target, central_target: Target, request: pytest.FixtureRequest
) -> None:
    examples = 1200 if soak(request.config) else 300
    tally = Tally()
    server_before = server_side_forbidden()
    assert central_target.database_url is not None
    conninfo = _conninfo(central_target.database_url)
    for target, services, check in ((edge_target, [EDGE], None), (central_target, [SYNC, POLICY], conninfo)):
        for service in services:
            for method in _methods(service):
                await _hypothesis_test(service, method, examples)(target, check, tally)
    await _check_still_serves(edge_target, central_target)
    report(
        "FUZZ",
        "hypothesis",
        inputs=tally.inputs,
        internal_or_unknown=len(tally.bad),
        server_internal_or_unknown=int(server_side_forbidden() - server_before),
        codes=dict(tally.codes),
    )
    assert tally.bad == [], tally.bad[:20]
    assert server_side_forbidden() == server_before, "a server answered INTERNAL or UNKNOWN"
