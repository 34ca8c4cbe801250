"""No poison items (issue 12), against real ``aeterna central`` and ``aeterna edge`` processes.

Found by fuzzing the edge's API: the edge answered OK to a decision whose resource held a NUL (or
was a few thousand characters long); central refused the whole batch (INVALID_ARGUMENT, or
UNAVAILABLE "database unreachable" for the index), the edge resent it forever, the decisions
channel never synced again, ``FlushSync`` answered OK and ``aeterna status`` said ONLINE.

* ``refused-before-ok``: the edge refuses such writes with INVALID_ARGUMENT; what it accepts syncs.
* ``item-refusals``: items central refuses one by one (a vector dimension central is not configured
  for) go to the edge's dead letters, counted and logged, instead of vanishing.
* ``batch-refusal``: a batch central refuses as a whole (more items than central's batch limit) is
  dead-lettered after the retries; the channel goes on and the checkpoints still match.
* ``degraded``: a channel that cannot make progress while online (central refuses every batch's
  signature) makes ``FlushSync`` answer UNAVAILABLE naming the channel and central's error, and
  shows as DEGRADED in ``GetEdgeStatus``, ``aeterna status``, the ``aeterna.sync`` health service
  and the ``aeterna_sync_degraded`` gauge.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_cli.processes import ServiceProcess
from central_svc.store.urls import psycopg_conninfo
from tests.fault.support import (
    ALLOW_ALL,
    DIMENSION,
    central_document,
    checkpoints_match,
    drained,
    edge_document,
    free_port,
    make_vector,
    report,
)
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(300)]

VECTORS = sync_pb2.SYNC_CHANNEL_VECTORS
DECISIONS = sync_pb2.SYNC_CHANNEL_DECISIONS


def start_pair(
    services: ServiceFactory, database_url: str, tmp_path: Path, agent: str, central: dict[str, Any], **edge: Any
) -> tuple[ServiceProcess, ServiceProcess]:
    port = free_port()
    document = central_document(database_url, tmp_path / "central-data", port)
    for key, value in central.items():
        document.setdefault(key, {}).update(value)
    central_process = services.make("central", "central", document).start()
    edge_process = services.make("edge", agent, edge_document(tmp_path / "edge-data", port, agent, **edge)).start()
    return central_process, edge_process


async def online(client: Client) -> bool:
    return (await client.status()).link_state == edge_pb2.LINK_STATE_ONLINE


def queue(status: edge_pb2.GetEdgeStatusResponse, channel: int) -> edge_pb2.QueueDepth:
    return next(q for q in status.queues if q.channel == channel)


def rows(database_url: str, sql: str) -> set[str]:
    with psycopg.connect(psycopg_conninfo(database_url)) as connection:
        return {str(row[0]) for row in connection.execute(sql).fetchall()}


def metric(process: ServiceProcess, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10).read().decode()
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


async def invalid(call: Any) -> str:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return caught.value.details() or ""


async def test_the_edge_refuses_before_ok_what_central_cannot_store_and_the_rest_syncs(
    services: ServiceFactory, database_url: str, tmp_path: Path
) -> None:
    _, edge = start_pair(services, database_url, tmp_path, "edge-poison", {})
    client = Client(edge.target)
    try:
        await wait_until(lambda: online(client), "the edge is online")

        def authorize(resource: str) -> Any:
            return client.edge.Authorize(
                edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource=resource), timeout=10
            )

        refusals = [
            await invalid(authorize('Doc::"a\x00b"')),
            await invalid(authorize('Doc::"' + "r" * 3000 + '"')),
            await invalid(
                client.edge.AppendEpisode(
                    edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(content="a\x00b")), timeout=10
                )
            ),
            await invalid(client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s\x00", "hi")))),
        ]
        assert refusals[0].startswith("resource: contains a NUL")
        assert refusals[1].startswith("resource: is 3007 bytes")
        decisions = [(await authorize(f'Doc::"d{n}"')).decision_id for n in range(5)]
        episode = await client.edge.AppendEpisode(
            edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(content="fine, with é and 😀")), timeout=10
        )
        await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s-ok", "hello")), timeout=10)
        reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60)
        assert reply.items_pending == 0
        assert await drained(client)
        status = await client.status()
        assert not status.degraded
        assert all(q.dead_letters == 0 for q in status.queues)
        assert rows(database_url, "SELECT decision_id FROM decisions") == set(decisions)
        assert rows(database_url, "SELECT episode_id FROM episodes") == {episode.episode_id}
        assert rows(database_url, "SELECT session_id FROM session_memory") == {"s-ok"}
        report("FAULT", "refused-before-ok", refused=len(refusals), synced=len(decisions) + 2, dead_letters=0)
    finally:
        await client.close()


async def test_items_central_refuses_go_to_the_dead_letters_not_nowhere(
    services: ServiceFactory, database_url: str, tmp_path: Path
) -> None:
    """Central is configured for 16-dimensional vectors, the edge for 8: central refuses each vector alone."""
    _, edge = start_pair(
        services, database_url, tmp_path, "edge-items", {"vectorDatabase": {"dimension": DIMENSION * 2}}
    )
    client = Client(edge.target)
    try:
        await wait_until(lambda: online(client), "the edge is online")
        vectors = [make_vector(f"v{n}", random.Random(n)) for n in range(3)]
        await client.edge.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=vectors), timeout=10)
        reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60)
        assert reply.items_pending == 0
        status = await client.status()
        assert queue(status, VECTORS).dead_letters == 3
        assert not status.degraded
        refused = await asyncio.to_thread(
            metric, edge, "aeterna_sync_refused_items_total", channel="vectors", reason="BAD_VECTOR"
        )
        assert refused == 3
        log = edge.log_text()
        assert all(f"central refused vectors item v{n}" in log for n in range(3))
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "aeterna_cli.main", "dead-letters", "list", "--config", str(edge.config_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        listing = listed.stdout
        assert "refused:BAD_VECTOR" in listing
        report("FAULT", "item-refusals", refused=3, dead_letters=queue(status, VECTORS).dead_letters, metric=refused)
    finally:
        await client.close()


async def test_a_batch_central_refuses_as_a_whole_is_dead_lettered_and_the_channel_goes_on(
    services: ServiceFactory, database_url: str, tmp_path: Path
) -> None:
    """Central takes at most 2 vectors a batch; the edge makes batches of 5: central refuses them whole."""
    small = {"sync": {"batch": {"maxSize": 2}, "episodicMemory": {"vectorSync": {"batchSize": 2}}}}
    central, edge = start_pair(services, database_url, tmp_path, "edge-batch", small)
    client = Client(edge.target)
    central_client = Client(central.target, "edge-batch")
    try:
        await wait_until(lambda: online(client), "the edge is online")
        too_many = [make_vector(f"big{n}", random.Random(n)) for n in range(5)]
        await client.edge.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=too_many), timeout=10)
        fits = [make_vector(f"ok{n}", random.Random(10 + n)) for n in range(2)]
        await client.edge.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=fits), timeout=10)
        attempts = 0

        async def flushed() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60)
            except aio.AioRpcError as error:
                # A round may end before central refused the batch maxRetries times: it says so.
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
            return reply.items_pending == 0

        await wait_until(flushed, "the refused batch is dead-lettered and the rest synced", limit=120)
        status = await client.status()
        assert queue(status, VECTORS).dead_letters == 5
        assert queue(status, VECTORS).pending_items == 0
        assert rows(database_url, "SELECT vector_id FROM vectors") == {"ok0", "ok1"}
        matched, pairs = await checkpoints_match(client, central_client)
        assert matched, pairs
        assert "central refused vectors batch" in edge.log_text()
        assert "BATCH_TOO_LARGE" in edge.log_text()
        report("FAULT", "batch-refusal", dead_letters=5, synced=2, flushes=attempts, checkpoints=pairs[VECTORS])
    finally:
        await client.close()
        await central_client.close()


async def test_a_channel_that_cannot_make_progress_is_degraded_and_flush_says_so(
    services: ServiceFactory, database_url: str, tmp_path: Path
) -> None:
    """Central accepts only its signing key; this edge signs with another one: every batch is refused."""
    _, edge = start_pair(
        services, database_url, tmp_path, "edge-stuck", {}, **{"sync.signing.key": "a-key-central-does-not-know"}
    )
    client = Client(edge.target)
    health = health_pb2_grpc.HealthStub(client.channel)
    try:
        await wait_until(lambda: online(client), "the edge is online")
        await client.edge.Authorize(
            edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"'), timeout=10
        )
        for _ in range(2):  # two rounds that make no progress
            with pytest.raises(aio.AioRpcError) as caught:
                await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            details = caught.value.details() or ""
            assert "decisions channel" in details, details
            assert "BAD_SIGNATURE" in details or "UNAUTHENTICATED" in details, details
        status = await client.status()
        assert status.link_state == edge_pb2.LINK_STATE_ONLINE
        assert status.degraded
        decisions = queue(status, DECISIONS)
        assert decisions.degraded
        assert decisions.pending_items == 1
        assert "UNAUTHENTICATED" in decisions.degraded_reason
        assert not queue(status, VECTORS).degraded

        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "aeterna_cli.main", "status", "--target", edge.target],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "DEGRADED" in shown.stdout
        assert "DEGRADED decisions: " in shown.stdout

        async def sync_not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(service="aeterna.sync"), timeout=5)
            return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

        await wait_until(sync_not_serving, "the aeterna.sync health service reports NOT_SERVING")
        whole = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert whole.status == health_pb2.HealthCheckResponse.SERVING  # liveness: the edge still serves agents
        gauge = await asyncio.to_thread(metric, edge, "aeterna_sync_degraded", channel="decisions")
        assert gauge == 1.0
        assert await asyncio.to_thread(metric, edge, "aeterna_sync_degraded", channel="vectors") == 0.0
        report("FAULT", "degraded", flush="UNAVAILABLE", reason=decisions.degraded_reason[:80], health="NOT_SERVING")
    finally:
        await client.close()


async def test_flush_with_nothing_stuck_is_ok(services: ServiceFactory, database_url: str, tmp_path: Path) -> None:
    """The control for the test above: the same edge with the right key is neither stuck nor degraded."""
    central, edge = start_pair(services, database_url, tmp_path, "edge-fine", {})
    client = Client(edge.target)
    central_client = Client(central.target, "operator")
    try:
        await central_client.publish(ALLOW_ALL)
        await wait_until(lambda: online(client), "the edge is online")
        await client.edge.Authorize(
            edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"'), timeout=10
        )
        reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=60)
        assert reply.items_pending == 0
        status = await client.status()
        assert not status.degraded
        reply = await health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service="aeterna.sync"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await client.close()
        await central_client.close()
