"""Central judges batch items one by one against ``aeterna_shared.limits`` (issue 12: no poison items).

Before, one value PostgreSQL could not hold (a NUL, a resource too long for the
``decisions_effective`` index, a timestamp out of range) failed the whole batch:
INVALID_ARGUMENT, or UNAVAILABLE "database unreachable" for the index, and the
edge resent that batch forever. Now such an item is an ``ItemFailure``
(``INVALID_ITEM``, message naming the field) and the rest of the batch is stored.
All against a real PostgreSQL, through central's gRPC API.
"""

from __future__ import annotations

import math
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2, policy_pb2
from aeterna.sync.v1 import sync_pb2
from google.protobuf import timestamp_pb2

from aeterna_shared import limits
from aeterna_shared.errors import InvalidArgument
from aeterna_shared.wire.canonical import sign_batch
from central_svc.store.database import Database
from central_svc.store.urls import psycopg_conninfo
from tests.central.conftest import Central, Edge, now_stamp
from tests.central.test_sessions import reason_of
from tests.support.postgres import TEST_VECTOR_DIMENSION

LONG_RESOURCE = 'Doc::"' + "r" * 6000 + '"'
"""A few thousand characters: the index row PostgreSQL refused with 'index row size 6032 exceeds ... 2704'."""


def decision(decision_id: str, resource: str = 'Doc::"d"', principal: str = 'User::"alice"') -> decision_pb2.Decision:
    return decision_pb2.Decision(
        decision_id=decision_id,
        decide_time=now_stamp(),
        principal=principal,
        action='Action::"read"',
        resource=resource,
        effect=decision_pb2.EFFECT_ALLOW,
    )


async def replay(central: Central, edge: Edge, decisions: list[decision_pb2.Decision]) -> sync_pb2.BatchAck:
    request = sync_pb2.ReplayDecisionsRequest(header=edge.header("decisions"), decisions=decisions)
    sign_batch(request, edge.key)
    response = await central.sync.ReplayDecisions(request, metadata=edge.metadata)
    return response.ack


def stored(central: Central, table: str, column: str) -> set[str]:
    assert central.config.postgresql.url is not None
    with psycopg.connect(psycopg_conninfo(central.config.postgresql.url)) as connection:
        return {str(row[0]) for row in connection.execute(f"SELECT {column} FROM {table}").fetchall()}


def incompressible(characters: int, width: int) -> str:
    """Random characters of ``width`` bytes of UTF-8 each (CJK: 3 bytes, CJK extension B: 4 bytes)."""
    base, span = (0x4E00, 20000) if width == 3 else (0x20000, 40000)
    return "".join(chr(base + secrets.randbelow(span)) for _ in range(characters))


def failures(ack: sync_pb2.BatchAck) -> dict[str, tuple[str, str]]:
    return {f.item_id: (f.reason, f.message) for f in ack.failures}


async def test_a_bad_decision_fails_alone_and_the_rest_of_the_batch_is_stored(central: Central) -> None:
    edge = Edge("edge-poison")
    out_of_range = decision("d-time")
    out_of_range.decide_time.CopyFrom(timestamp_pb2.Timestamp(seconds=limits.MAX_EPOCH_SECONDS + 1))
    deep = decision("d-deep")
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(limits.MAX_JSON_DEPTH + 2):
        nested = {"n": nested}
    deep.metadata.update({"context": nested})
    nan = decision("d-nan")
    nan.metadata.update({"risk": math.nan})
    batch = [
        decision("d-ok-1"),
        decision("d-nul", resource='Doc::"a\x00b"'),
        decision("d-long", resource=LONG_RESOURCE),
        decision("d-principal", principal='User::"' + "p" * 2000 + '"'),
        out_of_range,
        deep,
        nan,
        decision("d-ok-2"),
    ]
    ack = await replay(central, edge, batch)
    refused = failures(ack)
    assert (ack.status, ack.processed, ack.failed) == (sync_pb2.ACK_STATUS_PARTIAL, 2, 6)
    assert {reason for reason, _ in refused.values()} == {"INVALID_ITEM"}
    assert refused["d-nul"][1].startswith("decisions[1].resource: contains a NUL")
    assert refused["d-long"][1].startswith("decisions[2].resource: is 6007 bytes")
    assert refused["d-principal"][1].startswith("decisions[3].principal:")
    assert refused["d-time"][1].startswith("decisions[4].decide_time:")
    assert refused["d-deep"][1].startswith("decisions[5].metadata.context")
    assert refused["d-nan"][1].startswith("decisions[6].metadata.risk:")
    assert stored(central, "decisions", "decision_id") == {"d-ok-1", "d-ok-2"}
    # The checkpoint moved: the edge will not resend this batch.
    assert ack.checkpoint == 1


async def test_a_bad_episode_fails_alone(central: Central) -> None:
    edge = Edge("edge-poison")

    def episode(episode_id: str, **fields: object) -> memory_pb2.Episode:
        values: dict[str, Any] = {"content": "fine", "occur_time": now_stamp()}
        values.update(fields)
        return memory_pb2.Episode(episode_id=episode_id, **values)

    bad_time = episode("e-time")
    bad_time.occur_time.CopyFrom(timestamp_pb2.Timestamp(seconds=limits.MIN_EPOCH_SECONDS - 1))
    meta = episode("e-meta")
    meta.metadata.update({"k\x00": 1})
    zero = episode("e-zero", embedding=[0.0] * TEST_VECTOR_DIMENSION)
    request = sync_pb2.AppendEpisodesRequest(
        header=edge.header("episodes"),
        episodes=[
            episode("e-ok"),
            episode("e-nul", content="a\x00b"),
            episode("e-session", session_id="s" * 300),
            bad_time,
            meta,
            zero,
        ],
    )
    sign_batch(request, edge.key)
    ack = (await central.sync.AppendEpisodes(request, metadata=edge.metadata)).ack
    refused = failures(ack)
    assert (ack.processed, ack.failed) == (1, 5)
    assert refused["e-nul"] == ("INVALID_ITEM", refused["e-nul"][1])
    assert refused["e-nul"][1].startswith("episodes[1].content: contains a NUL")
    assert refused["e-session"][1].startswith("episodes[2].session_id: is 300 bytes")
    assert refused["e-time"][1].startswith("episodes[3].occur_time:")
    assert refused["e-meta"][0] == "INVALID_ITEM"
    assert refused["e-zero"][0] == "BAD_VECTOR"  # the vector check of old, more specific, comes first
    assert stored(central, "episodes", "episode_id") == {"e-ok"}


async def test_a_bad_vector_fails_alone(central: Central) -> None:
    edge = Edge("edge-poison")

    def vector(vector_id: str, payload: dict[str, Any] | None = None) -> memory_pb2.Vector:
        message = memory_pb2.Vector(vector_id=vector_id, values=[1.0] + [0.5] * (TEST_VECTOR_DIMENSION - 1))
        if payload is not None:
            message.payload.update(payload)
        return message

    bad_time = vector("v-time")
    bad_time.update_time.CopyFrom(timestamp_pb2.Timestamp(seconds=1, nanos=-5))
    request = sync_pb2.SyncVectorsRequest(
        header=edge.header("vectors"),
        vectors=[
            vector("v-ok", {"tag": "fine"}),
            vector("v-nul", {"tag": "a\x00b"}),  # jsonb cannot hold \\u0000: it failed the whole batch
            vector("v-nan", {"score": math.nan}),
            vector("v-" + "x" * 300),
            bad_time,
        ],
    )
    sign_batch(request, edge.key)
    [response] = [r async for r in central.sync.SyncVectors(iter([request]), metadata=edge.metadata)]
    refused = failures(response.ack)
    assert (response.ack.processed, response.ack.failed) == (1, 4)
    assert refused["v-nul"][1].startswith("vectors[1].payload.tag: contains a NUL")
    assert refused["v-nan"][1].startswith("vectors[2].payload")
    assert refused["v-" + "x" * 300][1].startswith("vectors[3].vector_id: is 302 bytes")
    assert refused["v-time"][1].startswith("vectors[4].update_time:")
    assert stored(central, "vectors", "vector_id") == {"v-ok"}


async def test_a_header_central_cannot_store_is_invalid_argument_not_unavailable(central: Central) -> None:
    edge = Edge("edge-poison")
    request = sync_pb2.ReplayDecisionsRequest(header=edge.header("decisions"), decisions=[decision("d1")])
    request.header.batch_id = str(uuid.uuid4()) + "x" * 3000
    sign_batch(request, edge.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.sync.ReplayDecisions(request, metadata=edge.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "VALUE_TOO_LONG"
    assert "header.batch_id" in (caught.value.details() or "")


async def test_a_data_error_that_slips_through_is_invalid_argument(database_url: str) -> None:
    """The adapter's mapping, on the real database: a value PostgreSQL refuses is the request's fault.

    An index row too large (SQLSTATE 54000) was mapped to UNAVAILABLE "database
    unreachable", which every edge retries forever.
    """
    database = Database(database_url, max_size=1)
    await database.open()
    try:
        insert = (
            "INSERT INTO decisions (decision_id, tenant_id, agent_id, resource, decide_time, status, data)"
            " VALUES (%s, 't', 'a', %s, now(), 'effective', '')"
        )
        with pytest.raises(InvalidArgument) as caught:
            async with database.transaction() as connection:
                # Random characters do not compress, so the index row really is this large.
                await connection.execute(insert, ("d-big", incompressible(3000, 3)))
        assert caught.value.reason == "UNSTORABLE_VALUE"
        assert "index row" in caught.value.message
        with pytest.raises(InvalidArgument):
            async with database.transaction() as connection:
                await connection.execute(insert, ("d-nul", "a\x00b"))
        # At the limits, with incompressible 4-byte characters, the same index takes the row.
        resource = incompressible(limits.MAX_RESOURCE_BYTES // 4, 4)
        tenant = incompressible(limits.MAX_ID_BYTES // 4, 4)
        limits.check_text(resource, "resource", max_bytes=limits.MAX_RESOURCE_BYTES)
        limits.check_id(tenant, "tenant")
        async with database.transaction() as connection:
            await connection.execute(
                "INSERT INTO decisions (decision_id, tenant_id, agent_id, resource, decide_time, status, data)"
                " VALUES ('d-max', %s, 'a', %s, now(), 'effective', '')",
                (tenant, resource),
            )
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("[]", "must be a JSON object (a Cedar schema in JSON format), not an array"),
        ("5", "not a number"),
        ('"text"', "not a string"),
        ("null", "not null"),
        ('{"": {}}', "is not a valid Cedar schema: missing field `entityTypes`"),
        ('{"NS": {"entityTypes": 5, "actions": {}}}', "is not a valid Cedar schema"),
        ("{not json", "not JSON"),
    ],
)
async def test_a_bad_schema_is_invalid_argument_not_internal(central: Central, schema: str, expected: str) -> None:
    """cedarpy raised a TypeError for a schema that is not a JSON object: PublishPolicies answered INTERNAL."""
    request = policy_pb2.PublishPoliciesRequest(
        policies=[policy_pb2.CedarPolicy(policy_id="p", text="permit(principal, action, resource);")],
        schema_json=schema,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.policy.PublishPolicies(request, metadata=Edge("operator").metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INVALID_SCHEMA"
    assert expected in (caught.value.details() or "")
    assert (caught.value.details() or "").startswith("schema_json: ")


async def test_a_valid_schema_still_validates_policies(central: Central) -> None:
    schema = (
        '{"NS": {"entityTypes": {"User": {}}, "actions": {"read": {"appliesTo": '
        '{"principalTypes": ["User"], "resourceTypes": ["User"]}}}}}'
    )
    good = policy_pb2.PublishPoliciesRequest(
        policies=[
            policy_pb2.CedarPolicy(policy_id="p", text='permit(principal, action == NS::Action::"read", resource);')
        ],
        schema_json=schema,
    )
    reply = await central.policy.PublishPolicies(good, metadata=Edge("operator").metadata)
    assert reply.bundle.version >= 1
    bad = policy_pb2.PublishPoliciesRequest(
        policies=[
            policy_pb2.CedarPolicy(policy_id="q", text='permit(principal == NS::Nobody::"x", action, resource);')
        ],
        schema_json=schema,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.policy.PublishPolicies(bad, metadata=Edge("operator").metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INVALID_POLICY"


def test_timestamps_are_judged_per_item_not_per_batch() -> None:
    """The one shared range is the Timestamp spec's (years 1-9999)."""
    assert datetime(1, 1, 1, tzinfo=UTC).timestamp() == limits.MIN_EPOCH_SECONDS
    assert datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() == limits.MAX_EPOCH_SECONDS
