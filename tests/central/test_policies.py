"""Policy authority: validation, versions, and pushing new versions to watchers (also across replicas)."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from aeterna.policy.v1 import policy_pb2

from central_svc.store.urls import psycopg_conninfo
from tests.central.conftest import Central, Edge, StartCentral
from tests.central.test_sessions import reason_of

ALLOW = 'permit(principal, action == Action::"read", resource);'
OPERATOR = Edge("operator")


def publish_request(*policies: tuple[str, str]) -> policy_pb2.PublishPoliciesRequest:
    return policy_pb2.PublishPoliciesRequest(
        policies=[policy_pb2.CedarPolicy(policy_id=pid, text=text) for pid, text in policies]
    )


async def publish(central: Central, text: str = ALLOW) -> policy_pb2.PolicyBundle:
    response = await central.policy.PublishPolicies(publish_request(("p1", text)), metadata=OPERATOR.metadata)
    return response.bundle


async def test_invalid_cedar_is_rejected_with_a_readable_message(central: Central) -> None:
    request = publish_request(("good", ALLOW), ("broken", "permit(principal, action, resource) when { ;"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.policy.PublishPolicies(request, metadata=OPERATOR.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken" in (caught.value.details() or "")
    assert "unexpected token" in (caught.value.details() or "")
    assert reason_of(caught.value) == "INVALID_POLICY"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await central.policy.GetPolicyBundle(policy_pb2.GetPolicyBundleRequest(), metadata=OPERATOR.metadata)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_versions_increase_and_can_be_read(central: Central) -> None:
    first = await publish(central)
    second = await publish(central, "forbid(principal, action, resource);")
    assert (first.version, second.version) == (1, 2)
    assert first.checksum != second.checksum
    got = await central.policy.GetPolicyBundle(policy_pb2.GetPolicyBundleRequest(version=1), metadata=OPERATOR.metadata)
    assert got.bundle.policies[0].text == ALLOW
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await central.policy.PublishPolicies(
            policy_pb2.PublishPoliciesRequest(
                policies=[policy_pb2.CedarPolicy(policy_id="p", text=ALLOW)], expected_current_version=1
            ),
            metadata=OPERATOR.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def next_bundle(
    call: grpc.aio.UnaryStreamCall[policy_pb2.WatchPoliciesRequest, policy_pb2.WatchPoliciesResponse],
) -> policy_pb2.PolicyBundle:
    response = await asyncio.wait_for(call.read(), timeout=20)
    assert isinstance(response, policy_pb2.WatchPoliciesResponse), response  # not the end of the stream
    return response.bundle


async def test_watcher_gets_current_then_every_new_version(central: Central) -> None:
    await publish(central)
    call = central.policy.WatchPolicies(policy_pb2.WatchPoliciesRequest(known_version=0), metadata=OPERATOR.metadata)
    assert (await next_bundle(call)).version == 1
    await publish(central, "forbid(principal, action, resource);")
    assert (await next_bundle(call)).version == 2
    call.cancel()


async def test_publish_on_one_replica_reaches_watchers_of_another(start_central: StartCentral) -> None:
    first = await start_central()
    second = await start_central()
    call = second.policy.WatchPolicies(policy_pb2.WatchPoliciesRequest(), metadata=OPERATOR.metadata)
    await _wait_for_watchers(second, 1)
    await publish(first)
    assert (await next_bundle(call)).version == 1
    call.cancel()


async def test_version_published_while_listener_was_dead_still_arrives(start_central: StartCentral) -> None:
    publisher = await start_central()
    watched = await start_central()
    call = watched.policy.WatchPolicies(policy_pb2.WatchPoliciesRequest(), metadata=OPERATOR.metadata)
    await _wait_for_watchers(watched, 1)
    pid = await watched.deps.listener.backend_pid()
    url = watched.config.postgresql.url or ""
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as connection:
        assert connection.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    # Published while the listener is (or may be) down: the reconnect re-reads and still pushes it.
    await publish(publisher)
    assert (await next_bundle(call)).version == 1
    assert watched.deps.listener.reconnects >= 1
    call.cancel()


async def _wait_for_watchers(central: Central, count: int) -> None:
    for _ in range(400):
        if central.deps.policies.hub.watcher_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("watcher never connected")
