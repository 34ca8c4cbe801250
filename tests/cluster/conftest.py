"""The cluster suite's one fixture: three central replicas on one PostgreSQL behind HAProxy, and six edges.

Module scoped, so the processes start once (a few seconds each on a shared 2-core machine) and every
scenario but the scale-out one (which needs to start from a single replica) runs against them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.cluster.harness import FIGURES, LINES, Cluster, publish, wait_online
from tests.support.services import ServiceFactory

RATE_PER_SECOND = 200
"""``sync.rateLimit`` of the shared cluster (per identity); the burst is one second's worth."""
SNAPSHOT_RETENTION = 3
"""``central.snapshotRetention`` of the shared cluster."""
CONFLICT_ACTIONS = {'Action::"ts"': "timestamp", 'Action::"central"': "central", 'Action::"manual"': "manual"}
"""``aeterna.offline.conflictResolutionByAction``: one cluster serves all three conflict policies."""


@pytest.fixture(scope="module")
async def cluster(
    postgres_server: EmbeddedPostgres, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    """c1, c2, c3 on a fresh database, HAProxy (h2 + tcp), six edges through the h2 frontend."""
    root = tmp_path_factory.mktemp("cluster")
    factory = ServiceFactory(root)
    made = Cluster(
        factory,
        root,
        postgres_server,
        central_overrides={
            "sync.rateLimit": f"{RATE_PER_SECOND}/sec",
            "sync.rateLimitRedisUrl": redis_server,
            "sync.episodicMemory.snapshotInterval": "2s",
            "central.snapshotRetention": SNAPSHOT_RETENTION,
            "aeterna.offline.conflictResolutionByAction": CONFLICT_ACTIONS,
        },
    )
    try:
        await made.start()
        await publish(made.operator_client("c1"), 0)
        nodes = await made.start_edges([f"edge-h2-{i}" for i in range(1, 7)], via="h2")
        await wait_online(nodes)
        yield made
    finally:
        await made.close_clients()
        factory.close()
        made.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LINES:
        terminalreporter.section("cluster figures")
        for line in LINES:
            terminalreporter.write_line(line)
    if FIGURES:
        terminalreporter.write_line("CLUSTER FIGURES: " + " ".join(f"{k}={v}" for k, v in FIGURES.items()))
