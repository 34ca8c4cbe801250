"""Edge and central as real processes: sync, offline operation, crash recovery, read-through, fallback.

Central starts its own embedded PostgreSQL in its data directory. Where a test
restarts central, central keeps the same data directory and port, as a real
restart would; the port is picked free at the start of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2
from grpc import aio

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.edge.conftest import BUNDLE_POLICY, DIMENSION, closed_port, edge_document
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

ALLOW_ALICE = 'permit(principal == User::"alice", action == Action::"approve", resource);'
FORBID_ALL = "forbid(principal, action, resource);"


def central_document(data_dir: Path, port: int) -> dict[str, Any]:
    return {
        "deploymentMode": "central",
        "central": {"dataDir": str(data_dir)},
        "sync": {"listenPort": port},
        "telemetry": {"metricsPort": 0},
        "vectorDatabase": {"dimension": DIMENSION},
    }


def make_edge(
    services: ServiceFactory, tmp_path: Path, name: str, central_port: int, **overrides: Any
) -> ServiceProcess:
    document = edge_document(tmp_path / name / "data", central_port, **overrides)
    document["edge"]["agentId"] = name
    document["edge"]["region"] = f"region-{name}"
    document["sync"].pop("signing")
    return services.make("edge", name, document)


def decided_at_central(central_dir: Path, ids: list[str]) -> list[str]:
    """The ids among ``ids`` that central's decision log holds (its primary key makes each appear once)."""
    pg = EmbeddedPostgres(central_dir / "postgres")
    with psycopg.connect(pg.conninfo()) as conn:
        rows = conn.execute("SELECT decision_id FROM decisions WHERE decision_id = ANY(%s)", (ids,)).fetchall()
    return sorted(str(r[0]) for r in rows)


@dataclass
class CrashRig:
    """Central and one edge as processes, with a client on each (``e`` on the edge, ``c`` on central)."""

    central: ServiceProcess
    central_dir: Path
    edge: ServiceProcess
    e: Client
    c: Client

    async def kill_and_restart_edge(self) -> None:
        """SIGKILL the edge, then start it again on the same data, with a new client."""
        self.edge.kill()
        await self.e.close()
        self.edge.start()
        self.e = Client(self.edge.target)

    async def assert_reached_central(self, agent: str, sessions: list[str], content: str, ids: list[str]) -> None:
        """Central holds each of ``sessions`` (first turn ``content``) and each of the decisions ``ids``."""
        reader = Client(self.central.target, agent)
        try:
            for session_id in sessions:
                request = sync_pb2.GetSessionRequest(session_id=session_id)
                got = await reader.sync.GetSession(request, metadata=reader.metadata)
                assert got.session.messages[0].content == content
        finally:
            await reader.close()
        assert decided_at_central(self.central_dir, ids) == sorted(ids)


@asynccontextmanager
async def crash_rig(
    services: ServiceFactory, tmp_path: Path, agent: str, session_interval: str
) -> AsyncIterator[CrashRig]:
    """A ``CrashRig`` whose edge already decides with ``ALLOW_ALICE``; its clients are closed at the end."""
    port = closed_port()
    central_dir = tmp_path / "central"
    central = services.make("central", "central", central_document(central_dir, port)).start()
    edge = make_edge(services, tmp_path, agent, port, **{"sync.sessionMemory": {"interval": session_interval}}).start()
    rig = CrashRig(central, central_dir, edge, Client(edge.target), Client(central.target))
    try:
        await rig.c.publish(ALLOW_ALICE)

        async def allowed() -> bool:
            return (await rig.e.authorize()).effect == decision_pb2.EFFECT_ALLOW

        await wait_until(allowed, "the edge applies bundle 1")
        yield rig
    finally:
        await rig.e.close()
        await rig.c.close()


async def test_session_sync_and_read_through_at_a_second_edge(services: ServiceFactory, tmp_path: Path) -> None:
    central = services.make("central", "central", central_document(tmp_path / "central", 0)).start()
    edge_a = make_edge(services, tmp_path, "edge-a", central.port).start()
    edge_b = make_edge(services, tmp_path, "edge-b", central.port).start()
    a, b, c = Client(edge_a.target), Client(edge_b.target), Client(central.target, "edge-a")
    try:
        put = await a.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("sess-1", "hello")))
        flushed = await a.edge.FlushSync(edge_pb2.FlushSyncRequest())
        assert flushed.items_acked >= 1
        at_central = await c.sync.GetSession(sync_pb2.GetSessionRequest(session_id="sess-1"), metadata=c.metadata)
        assert at_central.session.checksum == put.session.checksum
        assert at_central.agent_id == "edge-a"
        first = await b.edge.GetSession(edge_pb2.GetSessionRequest(session_id="sess-1"))
        assert first.source == edge_pb2.SESSION_SOURCE_CENTRAL
        assert first.session.messages[0].content == "hello"
        second = await b.edge.GetSession(edge_pb2.GetSessionRequest(session_id="sess-1"))
        assert second.source == edge_pb2.SESSION_SOURCE_LOCAL
        with pytest.raises(aio.AioRpcError) as missing:
            await b.edge.GetSession(edge_pb2.GetSessionRequest(session_id="nowhere"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for client in (a, b, c):
            await client.close()


async def test_vector_search_falls_back_to_central_and_caches(services: ServiceFactory, tmp_path: Path) -> None:
    central = services.make("central", "central", central_document(tmp_path / "central", 0)).start()
    edge_a = make_edge(services, tmp_path, "edge-a", central.port).start()
    edge_b = make_edge(services, tmp_path, "edge-b", central.port).start()
    a, b = Client(edge_a.target), Client(edge_b.target)
    try:
        vectors = [
            memory_pb2.Vector(vector_id=f"v{i}", values=[1.0 if j == i else 0.05 for j in range(DIMENSION)])
            for i in range(DIMENSION)
        ]
        await a.edge.UpsertVectors(edge_pb2.UpsertVectorsRequest(vectors=vectors))
        await a.edge.FlushSync(edge_pb2.FlushSyncRequest())
        query = edge_pb2.SearchVectorsRequest(embedding=[1.0] + [0.0] * (DIMENSION - 1), limit=2, score_threshold=0.0)
        first = await b.edge.SearchVectors(query)
        assert first.local_count == 0
        assert first.central_count == 2
        assert first.results[0].vector.vector_id == "v0"
        assert not first.partial

        async def cached() -> bool:
            return (await b.edge.SearchVectors(query)).local_count == 2

        await wait_until(cached, "edge B answers from its cache")
        assert (await b.status()).local_vectors == 2
    finally:
        await a.close()
        await b.close()


async def test_offline_operation_replay_and_policy_updates(services: ServiceFactory, tmp_path: Path) -> None:
    port = closed_port()
    central_dir = tmp_path / "central"
    central = services.make("central", "central", central_document(central_dir, port)).start()
    edge = make_edge(services, tmp_path, "edge-e", port).start()
    strong = make_edge(services, tmp_path, "edge-s", port, **{"sync.episodicMemory": {"mode": "strong"}}).start()
    e, s, c = Client(edge.target), Client(strong.target), Client(central.target)
    try:
        # A policy published at central changes the edge's decisions without a restart.
        assert (await e.authorize()).effect != decision_pb2.EFFECT_ALLOW
        await c.publish(ALLOW_ALICE)

        async def allowed() -> bool:
            return (await e.authorize()).effect == decision_pb2.EFFECT_ALLOW

        await wait_until(allowed, "the edge applies bundle 1")
        version = await c.publish(ALLOW_ALICE + "\n" + FORBID_ALL)

        async def denied() -> bool:
            reply = await e.authorize()
            return reply.effect == decision_pb2.EFFECT_DENY and reply.policy_version == version

        await wait_until(denied, "the edge applies bundle 2")
        await c.publish(BUNDLE_POLICY)
        await wait_until(allowed, "the edge applies bundle 3")
        await e.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("sess-off", "before")))
        await e.edge.FlushSync(edge_pb2.FlushSyncRequest())
        stored = await s.edge.AppendEpisode(edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(content="strong")))
        assert stored.stored_at_central

        # Central goes away: after the threshold the edge is offline and keeps serving.
        central.stop()

        async def offline() -> bool:
            return (await e.status()).link_state == edge_pb2.LINK_STATE_OFFLINE

        await wait_until(offline, "the edge notices central is gone")
        decisions = [await e.authorize() for _ in range(5)]
        assert all(d.offline and d.effect == decision_pb2.EFFECT_ALLOW for d in decisions)
        local = await e.edge.GetSession(edge_pb2.GetSessionRequest(session_id="sess-off"))
        assert local.source == edge_pb2.SESSION_SOURCE_LOCAL
        eventual = await e.edge.AppendEpisode(
            edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(content="later"))
        )
        assert not eventual.stored_at_central

        async def strong_offline() -> bool:
            return (await s.status()).link_state == edge_pb2.LINK_STATE_OFFLINE

        await wait_until(strong_offline, "the strong edge notices central is gone")
        with pytest.raises(aio.AioRpcError) as refused:
            await s.edge.AppendEpisode(edge_pb2.AppendEpisodeRequest(episode=memory_pb2.Episode(content="no")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        async def decisions_queued() -> bool:
            return await e.pending(sync_pb2.SYNC_CHANNEL_DECISIONS) >= 5

        await wait_until(decisions_queued, "offline decisions are in the outbox")

        # Central comes back: everything queued arrives exactly once.
        central.start()

        async def drained() -> bool:
            status = await e.status()
            return status.link_state == edge_pb2.LINK_STATE_ONLINE and all(q.pending_items == 0 for q in status.queues)

        await wait_until(drained, "the edge is online with an empty outbox")
        ids = [d.decision_id for d in decisions]
        assert decided_at_central(central_dir, ids) == sorted(ids)
        status = await e.status()
        assert all(q.dead_letters == 0 for q in status.queues)
        c2 = Client(central.target, "edge-e")
        try:
            listed = await c2.sync.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-e"), metadata=c2.metadata)
            assert [ep.content for ep in listed.episodes] == ["later"]
        finally:
            await c2.close()
    finally:
        for client in (e, s, c):
            await client.close()


async def test_sigkill_with_a_full_outbox_and_restart_without_central(services: ServiceFactory, tmp_path: Path) -> None:
    async with crash_rig(services, tmp_path, "edge-k", session_interval="300ms") as rig:
        await rig.e.edge.FlushSync(edge_pb2.FlushSyncRequest())
        rig.central.stop()

        async def offline() -> bool:
            return (await rig.e.status()).link_state == edge_pb2.LINK_STATE_OFFLINE

        await wait_until(offline, "the edge notices central is gone")
        ids = [(await rig.e.authorize()).decision_id for _ in range(7)]
        for index in range(3):
            await rig.e.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(f"k{index}", "kept")))

        async def queued() -> bool:
            return (
                await rig.e.pending(sync_pb2.SYNC_CHANNEL_DECISIONS) == 7
                and await rig.e.pending(sync_pb2.SYNC_CHANNEL_SESSIONS) == 3
            )

        await wait_until(queued, "decisions and sessions are in the outbox")
        # Restarted with no central: it still decides with the persisted bundle, and the outbox is intact.
        await rig.kill_and_restart_edge()
        reply = await rig.e.authorize()
        assert reply.effect == decision_pb2.EFFECT_ALLOW
        assert reply.offline
        ids.append(reply.decision_id)
        assert await rig.e.pending(sync_pb2.SYNC_CHANNEL_SESSIONS) == 3

        rig.central.start()

        async def drained() -> bool:
            status = await rig.e.status()
            return status.link_state == edge_pb2.LINK_STATE_ONLINE and all(q.pending_items == 0 for q in status.queues)

        await wait_until(drained, "the restarted edge drains its outbox")
        await rig.assert_reached_central("edge-k", [f"k{index}" for index in range(3)], "kept", ids)


async def test_sigkill_right_after_acknowledged_writes_loses_nothing(services: ServiceFactory, tmp_path: Path) -> None:
    """Answers are promises: a session acknowledged but not yet collected, and a
    decision answered a moment before the crash, both reach central after a restart."""
    # Collection would only run in an hour: the sessions live only in the edge's cache when it dies.
    async with crash_rig(services, tmp_path, "edge-c", session_interval="1h") as rig:
        ids = [(await rig.e.authorize()).decision_id for _ in range(5)]
        for index in range(3):
            await rig.e.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(f"c{index}", "acknowledged")))
        await rig.kill_and_restart_edge()

        async def online() -> bool:
            return (await rig.e.status()).link_state == edge_pb2.LINK_STATE_ONLINE

        await wait_until(online, "the restarted edge reconnects")
        await rig.e.edge.FlushSync(edge_pb2.FlushSyncRequest())

        async def drained() -> bool:
            return all(q.pending_items == 0 for q in (await rig.e.status()).queues)

        await wait_until(drained, "the restarted edge drains its outbox")
        await rig.assert_reached_central("edge-c", [f"c{index}" for index in range(3)], "acknowledged", ids)
