"""An edge re-provisioned with an old identity: same agent id, empty data directory.

Real processes: a central on the test's PostgreSQL, one edge behind a fault proxy. The edge syncs
40 sessions and 40 decisions (so central's checkpoints on both channels are well above 30), stops,
its data directory is deleted and it starts again with the same agent id: a new incarnation whose
outbox counts from sequence 1. It fetches the policy bundle, the link goes down, and an agent has
30 sessions and 30 decisions acknowledged offline; the link comes back and the edge flushes.

Before incarnations the edge dropped those batches as "already applied at central" (its fresh
sequences were at or below central's checkpoint for the agent id): 0 of the 60 arrived. Asserted
here: every acknowledged item of both incarnations is at central exactly once (central's PostgreSQL
read directly), the edge's acked sequences equal central's checkpoints for its new incarnation, and
ListEdges shows incarnation_count 2 with the incarnation id the edge reports in GetEdgeStatus.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.sync.v1 import sync_pb2

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.fault.proxy import FaultProxy
from tests.fault.support import (
    ALLOW_ALL,
    Acked,
    central_document,
    check_central,
    checkpoints_match,
    drained,
    edge_document,
    free_port,
    report,
)
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(300)]

AGENT = "edge-reprovisioned"
FIRST_ITEMS = 40
OFFLINE_ITEMS = 30


async def _online_with_bundle(client: Client) -> bool:
    status = await client.status()
    return status.link_state == edge_pb2.LINK_STATE_ONLINE and status.policy_version > 0


async def _write(client: Client, acked: Acked, prefix: str, count: int, *, flush: bool) -> None:
    """``count`` sessions and ``count`` decisions, one at a time; only answered writes are recorded."""
    for n in range(count):
        sid = f"{prefix}-s{n}"
        reply = await client.edge.PutSession(
            edge_pb2.PutSessionRequest(session=make_session(sid, f"{prefix} write {n}")), timeout=10
        )
        acked.sessions[sid] = reply.session.checksum
        acked.session_write[sid] = n
        decision = await client.edge.Authorize(
            edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource=f'Doc::"{sid}"'),
            timeout=10,
        )
        acked.decisions.add(decision.decision_id)
        if flush:
            await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)


async def _flush_all(client: Client, what: str) -> None:
    async def flushed() -> bool:
        reply = await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
        return reply.items_pending == 0 and await drained(client)

    await wait_until(flushed, what)


async def test_reprovisioned_edge_syncs_what_it_acknowledged_offline(
    database_url: str, postgres_server: EmbeddedPostgres, services: ServiceFactory, tmp_path: Path
) -> None:
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    central_port = free_port()
    central = services.make(
        "central", "central", central_document(database_url, tmp_path / "central-data", central_port)
    ).start()
    proxy = await FaultProxy(central_port).start()
    # Central's RPCs as the edge's agent id (development auth): its checkpoints are the edge's.
    central_client = Client(central.target, AGENT)
    data_dir = tmp_path / "edge-data"  # apart from the service's home, which holds its config and log
    edge = services.make("edge", AGENT, edge_document(data_dir, proxy.port, AGENT))
    client: Client | None = None
    try:
        await central_client.publish(ALLOW_ALL)

        # The first incarnation syncs 40 + 40 items, one batch each: central's checkpoints reach 40.
        edge.start()
        client = first_client = Client(edge.target)
        await wait_until(lambda: _online_with_bundle(first_client), "the first incarnation is online with the bundle")
        first = Acked(prefix="first")
        await _write(client, first, "first", FIRST_ITEMS, flush=True)
        await _flush_all(client, "the first incarnation has synced everything")
        old_incarnation = (await client.status()).incarnation_id
        reply = await central_client.sync.GetSyncCheckpoint(
            sync_pb2.GetSyncCheckpointRequest(incarnation_id=old_incarnation), metadata=central_client.metadata
        )
        old_checkpoints = {c.channel: int(c.sequence) for c in reply.checkpoints}
        assert old_checkpoints[sync_pb2.SYNC_CHANNEL_DECISIONS] >= OFFLINE_ITEMS
        assert old_checkpoints[sync_pb2.SYNC_CHANNEL_SESSIONS] >= OFFLINE_ITEMS

        # Re-provisioned: stopped, data directory deleted, started again with the same agent id.
        edge.stop()
        await client.close()
        shutil.rmtree(data_dir)
        edge.start()
        client = new_client = Client(edge.target)
        await wait_until(lambda: _online_with_bundle(new_client), "the new incarnation is online with the bundle")
        new_incarnation = (await client.status()).incarnation_id

        # Central becomes unreachable; the agent's writes are acknowledged offline.
        proxy.mode = "refuse"
        proxy.cut()

        async def offline() -> bool:
            return (await new_client.status()).link_state == edge_pb2.LINK_STATE_OFFLINE

        await wait_until(offline, "the edge notices central is unreachable")
        second = Acked(prefix="second")
        await _write(client, second, "second", OFFLINE_ITEMS, flush=False)
        assert (len(second.sessions), len(second.decisions)) == (OFFLINE_ITEMS, OFFLINE_ITEMS)

        # The link is back: the edge reconnects and flushes.
        proxy.mode = "pass"
        await _flush_all(client, "the new incarnation has synced what it acknowledged offline")

        for label, acked in (("offline writes of the new incarnation", second), ("first incarnation", first)):
            verdict = check_central(conninfo, AGENT, acked)
            assert verdict.lost == [], f"{label}: {len(verdict.lost)} acknowledged items missing at central"
            assert verdict.duplicated == [], f"{label}: items stored more than once: {verdict.duplicated}"
            assert verdict.wrong == [], f"{label}: items with other content at central: {verdict.wrong}"
        ok, pairs = await checkpoints_match(client, central_client)
        assert ok, f"edge acked sequence != central checkpoint of the new incarnation (edge, central): {pairs}"

        edges = await central_client.sync.ListEdges(
            sync_pb2.ListEdgesRequest(page_size=100), metadata=central_client.metadata
        )
        info = next(e for e in edges.edges if e.agent_id == AGENT)
        assert new_incarnation not in ("", old_incarnation)
        assert info.incarnation_count == 2
        assert info.incarnation_id == new_incarnation == (await client.status()).incarnation_id
        assert info.HasField("incarnation_start_time")
        warning = f"edge {AGENT} was re-provisioned: incarnation {old_incarnation} -> {new_incarnation}"
        assert warning in central.log_text()
        report(
            "FAULT",
            "reprovisioned-edge",
            first_items=first.items,
            offline_items=second.items,
            old_checkpoints="/".join(str(v) for v in old_checkpoints.values()),
            lost=0,
            duplicated=0,
            incarnations=info.incarnation_count,
        )
    finally:
        if client is not None:
            await client.close()
        await central_client.close()
        await proxy.close()
