"""An edge copes with central closing its connections by age (``central.maxConnectionAge``).

Behind a balancer, central sends GOAWAY to every connection once it is
``maxConnectionAge`` old and closes it ``maxConnectionAgeGrace`` later, so that
long-lived edge streams spread over replicas added since. Here a real central
does so every ~2 s (grace 1 s) while a real edge syncs sessions for ~15 s and
keeps its policy watch open: every session reaches central's PostgreSQL,
nothing is left pending and nothing is dead-lettered; the watch stream was
re-opened (central counted several ended WatchPolicies streams) and still
delivers, since a bundle published at the end reaches the edge.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import psycopg
from aeterna.edge.v1 import edge_pb2
from aeterna.sync.v1 import sync_pb2

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.edge.conftest import DIMENSION, closed_port, edge_document
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

SYNC_SECONDS = 15.0
ALLOW = 'permit(principal == User::"alice", action == Action::"approve", resource);'
FORBID = "forbid(principal, action, resource);"


def watch_streams_ended(central: ServiceProcess) -> float:
    """How many WatchPolicies streams central saw end (any status), from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{central.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{") and 'grpc_method="WatchPolicies"' in line
    )


def stored_at_central(central_dir: Path, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that central's session table holds."""
    with psycopg.connect(EmbeddedPostgres(central_dir / "postgres").conninfo()) as connection:
        rows = connection.execute("SELECT session_id FROM session_memory WHERE session_id = ANY(%s)", (ids,)).fetchall()
    return {str(row[0]) for row in rows}


async def test_the_edge_resumes_its_streams_after_goaway_without_losing_a_sync(
    services: ServiceFactory, tmp_path: Path
) -> None:
    port = closed_port()
    central_dir = tmp_path / "central"
    central = services.make(
        "central",
        "central",
        {
            "deploymentMode": "central",
            "central": {"dataDir": str(central_dir), "maxConnectionAge": "2s", "maxConnectionAgeGrace": "1s"},
            "sync": {"listenPort": port},
            "telemetry": {"metricsPort": 0},
            "vectorDatabase": {"dimension": DIMENSION},
        },
    ).start()
    document = edge_document(tmp_path / "edge" / "data", port, **{"sync.sessionMemory": {"interval": "300ms"}})
    document["sync"].pop("signing")  # central and edge both on the development signing key
    edge = services.make("edge", "edge", document).start()
    e, c = Client(edge.target), Client(central.target)
    try:
        await c.publish(ALLOW)

        async def bundle(version: int) -> bool:
            return (await e.status()).policy_version == version

        await wait_until(lambda: bundle(1), "the edge applies bundle 1")

        ids: list[str] = []
        deadline = time.monotonic() + SYNC_SECONDS
        while time.monotonic() < deadline:
            session_id = f"s-{len(ids)}"
            await e.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session(session_id, "hello")))
            ids.append(session_id)
            await asyncio.sleep(0.05)

        version = await c.publish(FORBID)  # on a connection past its age by now; the edge's watch must resume

        async def synced() -> bool:
            status = await e.status()
            sessions = next(q for q in status.queues if q.channel == sync_pb2.SYNC_CHANNEL_SESSIONS)
            if sessions.pending_items or status.policy_version != version:
                return False
            return await asyncio.to_thread(stored_at_central, central_dir, ids) == set(ids)

        await wait_until(synced, "every session is at central, nothing is pending and the last bundle applied")
        status = await e.status()
        assert [q.dead_letters for q in status.queues] == [0] * len(status.queues)
        # Each watch stream was ended by central's connection age, and the edge opened a new one each time.
        assert watch_streams_ended(central) >= 3
    finally:
        await e.close()
        await c.close()
