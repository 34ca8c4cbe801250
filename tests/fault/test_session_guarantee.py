"""Acknowledged sessions survive memory pressure, concurrent writers and offline appends (real processes).

Each scenario runs a real central on the test's PostgreSQL and real edge processes with their own
redis-servers, and ends by reading central's PostgreSQL directly. On the code before issue 12 they
lost writes that had been answered OK:

* memory pressure: one redis-server with ``allkeys-lru`` held working memory, the sessions and the
  dirty index; a burst of working-memory writes evicted acknowledged sessions;
* concurrency: ``AppendSessionMessages`` read, modified and wrote the session with no lock; of 20
  concurrent appends, 7 to 17 were kept;
* offline appends: an append to a session the edge did not hold started a new local session, whose
  newer timestamp then replaced the whole conversation at central.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.memory.v1 import memory_pb2
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.fault.proxy import FaultProxy
from tests.fault.support import ALLOW_ALL, central_document, drained, edge_document, free_port, report
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(300)]


@dataclass
class Cluster:
    """A central, and a way to start edges behind their own fault proxy."""

    services: ServiceFactory
    central: ServiceProcess
    central_port: int
    conninfo: str
    tmp_path: Path
    proxies: list[FaultProxy]
    clients: list[Client]

    async def edge(self, agent: str, **overrides: Any) -> tuple[Client, FaultProxy, str]:
        """A running edge behind its own proxy: (client, proxy, target)."""
        proxy = await FaultProxy(self.central_port).start()
        self.proxies.append(proxy)
        # The agents here write as fast as they can: lift the per-caller rate limit.
        overrides = {"sync.rateLimit": "100000/sec", **overrides}
        document = edge_document(self.tmp_path / f"{agent}-data", proxy.port, agent, **overrides)
        process = self.services.make("edge", agent, document).start()
        client = Client(process.target)
        self.clients.append(client)

        async def online() -> bool:
            status = await client.status()
            return status.link_state == edge_pb2.LINK_STATE_ONLINE and status.policy_version > 0

        await wait_until(online, f"edge {agent} is online with the policy bundle")
        return client, proxy, process.target

    def stored(self, session_id: str) -> memory_pb2.Session | None:
        with psycopg.connect(self.conninfo) as connection:
            row = connection.execute("SELECT data FROM session_memory WHERE session_id = %s", (session_id,)).fetchone()
        return None if row is None else memory_pb2.Session.FromString(bytes(row[0]))


@pytest.fixture
async def cluster(
    database_url: str, postgres_server: EmbeddedPostgres, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[Cluster]:
    port = free_port()
    central = services.make("central", "central", central_document(database_url, tmp_path / "central", port)).start()
    operator = Client(central.target)
    await operator.publish(ALLOW_ALL)
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    built = Cluster(services, central, port, conninfo, tmp_path, [], [operator])
    try:
        yield built
    finally:
        for client in built.clients:
            await client.close()
        for proxy in built.proxies:
            await proxy.close()


async def flush(client: Client, what: str) -> None:
    """FlushSync until the edge's outbox is empty (bounded)."""

    async def flushed() -> bool:
        reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
        return reply.items_pending == 0 and await drained(client)

    await wait_until(flushed, what)


async def go_offline(client: Client, proxy: FaultProxy) -> None:
    proxy.mode = "refuse"
    proxy.cut()

    async def offline() -> bool:
        return (await client.status()).link_state == edge_pb2.LINK_STATE_OFFLINE

    await wait_until(offline, "the edge notices central is unreachable")


def turns(*texts: str) -> list[memory_pb2.SessionMessage]:
    return [memory_pb2.SessionMessage(role="user", content=text) for text in texts]


async def test_working_memory_floods_never_evict_acknowledged_sessions(cluster: Cluster) -> None:
    client, _, _ = await cluster.edge("edge-pressure", **{"cache.layers.working.maxSize": "4Mi"})
    sessions = [f"pressure-{n}" for n in range(200)]
    for sid in sessions:
        await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(sid, f"text of {sid}")))
    # A burst of working memory three times the working bound: the working store evicts its own keys.
    value = struct_pb2.Value(string_value="w" * 8192)
    for n in range(1500):
        await client.edge.SetWorkingMemory(edge_pb2.SetWorkingMemoryRequest(key=f"burst-{n}", value=value))
    readable = 0
    for sid in sessions:
        reply = await client.edge.GetSession(edge_pb2.GetSessionRequest(session_id=sid))
        readable += reply.session.messages[0].content == f"text of {sid}"
    assert readable == len(sessions), f"{len(sessions) - readable} acknowledged sessions no longer readable"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.edge.GetWorkingMemory(edge_pb2.GetWorkingMemoryRequest(key="burst-0"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, "the first working-memory values were evicted"
    await flush(client, "the edge has synced every session")
    lost = [sid for sid in sessions if cluster.stored(sid) is None]
    assert lost == [], f"{len(lost)} acknowledged sessions never reached central"
    report("FAULT", "working-memory-flood", sessions=len(sessions), working_writes=1500, lost=0)


async def test_a_full_session_store_refuses_before_answering_and_keeps_what_it_took(cluster: Cluster) -> None:
    client, proxy, _ = await cluster.edge("edge-full", **{"cache.layers.session.maxSize": "4Mi"})
    await go_offline(client, proxy)
    acked: list[str] = []
    refusal: grpc.aio.AioRpcError | None = None
    for n in range(2000):
        sid = f"full-{n}"
        try:
            await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(sid, "x" * 16384)))
        except grpc.aio.AioRpcError as error:
            refusal = error
            break
        acked.append(sid)
    assert refusal is not None, "a 4 MiB session store took 32 MiB of sessions"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refusal)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details), "no RetryInfo with RESOURCE_EXHAUSTED"
    assert retry.retry_delay.seconds > 0
    assert len(acked) > 50
    # The link comes back: everything answered OK reaches central; the refused write does not exist.
    proxy.mode = "pass"
    await flush(client, "the edge has synced what the full store held")
    lost = [sid for sid in acked if cluster.stored(sid) is None]
    assert lost == [], f"{len(lost)} acknowledged sessions never reached central"
    assert cluster.stored(f"full-{len(acked)}") is None
    # Synced copies may now make room: the store takes writes again.
    await client.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("after-sync", "x" * 16384)))
    report("FAULT", "session-store-full", acked=len(acked), refused="RESOURCE_EXHAUSTED", lost=0)


async def test_concurrent_appends_to_one_session_all_land_once(cluster: Cluster) -> None:
    client, _, target = await cluster.edge("edge-appends")
    writers = [Client(target) for _ in range(20)]  # 20 agents, 20 connections
    cluster.clients.extend(writers)
    rounds = 3
    for round_ in range(rounds):
        await asyncio.gather(
            *(
                writer.edge.AppendSessionMessages(
                    edge_pb2.AppendSessionMessagesRequest(
                        session_id="busy", user_id="u", messages=turns(f"r{round_} w{index}")
                    )
                )
                for index, writer in enumerate(writers)
            )
        )
        local = await client.edge.GetSession(edge_pb2.GetSessionRequest(session_id="busy"))
        assert len(local.session.messages) == 20 * (round_ + 1), "concurrent appends lost at the edge"
    await flush(client, "the edge has synced the busy session")
    stored = cluster.stored("busy")
    assert stored is not None
    texts = [m.content for m in stored.messages]
    expected = {f"r{r} w{i}" for r in range(rounds) for i in range(20)}
    assert sorted(texts) == sorted(expected), "central lost or duplicated turns"
    assert len({m.message_id for m in stored.messages}) == len(texts)
    report("FAULT", "concurrent-appends", writers=20, rounds=rounds, turns=len(texts), lost=0, duplicated=0)


async def test_offline_appends_from_two_edges_merge_with_the_conversation_at_central(cluster: Cluster) -> None:
    first, _, _ = await cluster.edge("edge-first")
    second, second_proxy, _ = await cluster.edge("edge-second")
    session = make_session("shared", "turn 1")
    session.messages.extend(turns("turn 2", "turn 3"))
    await first.edge.PutSession(edge_pb2.PutSessionRequest(session=session))
    await flush(first, "the first edge has synced the conversation")

    # The second edge, which never held the session, appends while it is offline.
    await go_offline(second, second_proxy)
    reply = await second.edge.AppendSessionMessages(
        edge_pb2.AppendSessionMessagesRequest(session_id="shared", messages=turns("offline 1", "offline 2"))
    )
    assert [m.content for m in reply.session.messages] == ["offline 1", "offline 2"]
    # Meanwhile the first edge goes on with the conversation.
    await first.edge.AppendSessionMessages(
        edge_pb2.AppendSessionMessagesRequest(session_id="shared", messages=turns("turn 4"))
    )
    await flush(first, "the first edge has synced its append")
    second_proxy.mode = "pass"
    await flush(second, "the second edge has synced its offline append")

    stored = cluster.stored("shared")
    assert stored is not None
    texts = [m.content for m in stored.messages]
    assert texts == ["turn 1", "turn 2", "turn 3", "turn 4", "offline 1", "offline 2"]
    # The second edge dropped its partial copy once central merged it: a read now returns the whole.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await second.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
    whole = await second.edge.GetSession(edge_pb2.GetSessionRequest(session_id="shared"))
    assert [m.content for m in whole.session.messages] == texts
    assert whole.source == edge_pb2.SESSION_SOURCE_CENTRAL
    report("FAULT", "offline-append-merge", edges=2, turns=len(texts), lost=0, duplicated=0)
