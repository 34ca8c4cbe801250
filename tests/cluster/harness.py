"""The cluster harness: one PostgreSQL, several ``aeterna central`` replicas, a real HAProxy, real edges.

Why a harness of its own: a single central process cannot show what only several replicas behind a
balancer expose — a policy published at one replica reaching streams held by the others (LISTEN/NOTIFY),
a replica dying under in-flight batches, connections rebalancing after scale-out, conflicts settled by
PostgreSQL rather than by one process's memory, a rate limit shared through Redis, and one snapshot
leader. Everything here is a real process (``aeterna central``/``aeterna edge`` via ``ServiceFactory``,
``haproxy``, ``redis-server``, the embedded PostgreSQL); the test only writes, kills, reads stats and
finally counts rows in central's PostgreSQL against what the edges acknowledged to their agents.

Figures are printed (``CLUSTER <scenario> key=value ...``) and gathered into one ``CLUSTER FIGURES:``
line at the end of the run; bounds are asserted only where the issue states them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aeterna.edge.v1 import edge_pb2
from grpc import aio

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.cluster.haproxy import Backend, HAProxy
from tests.fault.support import (
    ALLOW_ALL,
    DIMENSION,
    Writer,
    check_central,
    checkpoints_match,
    drained,
    edge_document,
    free_port,
)
from tests.support.clients import Client
from tests.support.postgres import _TEMPLATE
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

FIGURES: dict[str, str] = {}
"""Headline figures of this run, printed together at the end (``CLUSTER FIGURES: ...``)."""
LINES: list[str] = []
"""Every ``CLUSTER ...`` line printed in this run (repeated in the terminal summary)."""

_databases = itertools.count(1)


def report(scenario: str, **figures: object) -> None:
    """Print (and remember) one ``CLUSTER <scenario> ...`` line."""
    line = f"CLUSTER {scenario} " + " ".join(f"{key}={value}" for key, value in figures.items())
    LINES.append(line)
    print(line, flush=True)


def fresh_database(postgres: EmbeddedPostgres) -> tuple[str, str]:
    """A new database cloned from the migrated test template: (SQLAlchemy URL, psycopg conninfo)."""
    name = f"cluster_{next(_databases)}_{random.randrange(1 << 30)}"
    with psycopg.connect(postgres.conninfo(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return postgres.url_for(name), postgres.conninfo(name)


def _set(document: dict[str, Any], dotted: str, value: object) -> None:
    target = document
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


@dataclass
class Replica:
    """One central replica: a fixed port (HAProxy's config names it) and its process."""

    name: str
    port: int
    service: ServiceProcess

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str) -> float | None:
        """One unlabelled gauge from the replica's /metrics, None when absent or unreachable."""
        if not self.service.running or not self.service.metrics_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.service.metrics_port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        found = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None


@dataclass
class EdgeNode:
    """An edge process, a client to it, and the agents writing through it (their ledgers)."""

    name: str
    service: ServiceProcess
    client: Client
    writers: list[Writer] = field(default_factory=list)


class Cluster:
    """Replicas of central on one database behind one HAProxy (h2 and tcp frontends), and edges."""

    def __init__(
        self,
        factory: ServiceFactory,
        root: Path,
        postgres: EmbeddedPostgres,
        *,
        names: Iterable[str] = ("c1", "c2", "c3"),
        central_overrides: dict[str, object] | None = None,
    ) -> None:
        self.factory = factory
        self.root = root
        self.database_url, self.conninfo = fresh_database(postgres)
        self.snapshot_dir = root / "snapshots"
        self.overrides = dict(central_overrides or {})
        self.replicas: dict[str, Replica] = {}
        for name in names:
            port = free_port()
            document = self.central_config(name, port)
            service = factory.make("central", name, document)
            self.replicas[name] = Replica(name, port, service)
        self.haproxy = HAProxy(root / "haproxy", [], h2_port=free_port(), tcp_port=free_port())
        self.edges: list[EdgeNode] = []
        self.operator: dict[str, Client] = {}

    def central_config(self, name: str, port: int) -> dict[str, Any]:
        """A replica's config: the shared database, its own data dir and port, the cluster's overrides."""
        document: dict[str, Any] = {
            "deploymentMode": "central",
            "postgresql": {"url": self.database_url, "poolSize": 5},
            "central": {"dataDir": str(self.root / name / "data"), "snapshotDir": str(self.snapshot_dir)},
            "sync": {"listenPort": port},
            "telemetry": {"metricsPort": 0, "logFormat": "text"},
            "vectorDatabase": {"dimension": DIMENSION},
        }
        for dotted, value in self.overrides.items():
            _set(document, dotted, value)
        return document

    # --- replicas and balancer ------------------------------------------------------------------

    async def start(self, running: Iterable[str] | None = None) -> None:
        """Start the replicas named in ``running`` (default all), then HAProxy with the others disabled."""
        wanted = set(self.replicas if running is None else running)
        await self.start_replicas(sorted(wanted))
        self.haproxy.servers = [Backend(r.name, r.port, r.name in wanted) for r in self.replicas.values()]
        await asyncio.to_thread(self.haproxy.start)
        ups = dict.fromkeys(sorted(wanted), "UP")
        await asyncio.to_thread(self.haproxy.wait_status, "be_h2", ups)
        await asyncio.to_thread(self.haproxy.wait_status, "be_tcp", ups)

    async def start_replicas(self, names: list[str]) -> None:
        """Start several replicas at once (each start blocks until its ready file appears)."""
        await asyncio.gather(*(asyncio.to_thread(self.replicas[n].service.start) for n in names))

    def kill(self, name: str) -> None:
        """SIGKILL a replica (its whole process group), as a crash or an OOM kill would."""
        self.replicas[name].service.kill()

    def operator_client(self, name: str) -> Client:
        """A client on one replica's own port (not through the balancer)."""
        if name not in self.operator:
            self.operator[name] = Client(self.replicas[name].target, "operator")
        return self.operator[name]

    @property
    def h2_port(self) -> int:
        return self.haproxy.h2_port

    @property
    def tcp_port(self) -> int:
        return self.haproxy.tcp_port

    # --- edges -----------------------------------------------------------------------------------

    async def start_edges(self, names: list[str], *, via: str, agents: int = 3, **overrides: object) -> list[EdgeNode]:
        """Start edge processes (in parallel) whose ``sync.centralServer`` is HAProxy's ``via`` frontend."""
        port = self.h2_port if via == "h2" else self.tcp_port
        settings: dict[str, object] = {
            # Health checks through the balancer; a loaded 2-core machine needs a 1 s deadline.
            "centralServer.healthCheck.interval": "300ms",
            "centralServer.healthCheck.timeout": "1s",
            "centralServer.healthCheck.failureThreshold": 2,
            "sync.centralServer.timeout": "5s",
            "sync.centralServer.maxRetries": 3,
            # Batches of up to 50 items: the per-identity rate limit counts every streamed batch.
            "sync.batch.maxSize": 50,
            **overrides,
        }
        services = [
            self.factory.make("edge", name, edge_document(self.root / name / "data", port, name, **settings))
            for name in names
        ]
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in services))
        made = []
        for name, service in zip(names, services, strict=True):
            rng = random.Random(f"{name}")
            node = EdgeNode(name, service, Client(service.target))
            node.writers = [Writer(f"{name}-a{i}", rng) for i in range(agents)]
            made.append(node)
        self.edges += made
        return made

    async def close_clients(self) -> None:
        for node in self.edges:
            await node.client.close()
        for client in self.operator.values():
            await client.close()
        self.operator.clear()

    def stop(self) -> None:
        """HAProxy down; the factory stops the processes."""
        self.haproxy.stop()


async def publish(client: Client, revision: int) -> int:
    """Publish an allow-all bundle (a new revision each time) through ``client``; the new version."""
    return await client.publish(f"{ALLOW_ALL}\n// revision {revision}")


async def wait_online(nodes: list[EdgeNode], *, version: int = 1, limit: float = 60.0) -> None:
    """Every edge ONLINE with at least policy ``version``."""
    for node in nodes:

        async def ready(n: EdgeNode = node) -> bool:
            status = await n.client.status()
            return status.link_state == edge_pb2.LINK_STATE_ONLINE and status.policy_version >= version

        await wait_until(ready, f"{node.name} is online with policy {version}", limit)


async def write_for(
    nodes: list[EdgeNode], seconds: float, *, flush_every: float = 0.1, stop: asyncio.Event | None = None
) -> int:
    """Every agent of every edge writes for ``seconds`` (or until ``stop``) while each edge flushes every
    ``flush_every``; returns how many writes failed.

    Only answered writes enter a ledger; an error (a replica dying under the call) is counted and the
    agent goes on, as a real agent would retry.
    """
    deadline = time.monotonic() + seconds
    errors = 0

    def going() -> bool:
        return time.monotonic() < deadline and not (stop is not None and stop.is_set())

    async def agent(node: EdgeNode, writer: Writer) -> None:
        nonlocal errors
        while going():
            try:
                await writer.step(node.client)
            except aio.AioRpcError:
                errors += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)

    async def flusher(node: EdgeNode) -> None:
        while going():
            with contextlib.suppress(aio.AioRpcError):
                await node.client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=10)
            await asyncio.sleep(flush_every)

    await asyncio.gather(*(agent(n, w) for n in nodes for w in n.writers), *(flusher(n) for n in nodes))
    return errors


@dataclass
class Tally:
    """The end-of-scenario count: acknowledged items against central's PostgreSQL."""

    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)


async def settle_and_count(cluster: Cluster, nodes: list[EdgeNode], limit: float = 90.0) -> Tally:
    """Flush every edge until nothing is pending, check checkpoints (asked through the h2 balancer, as
    the edge itself), then count rows in central's PostgreSQL."""
    for node in nodes:

        async def flushed(n: EdgeNode = node) -> bool:
            reply = await n.client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
            return reply.items_pending == 0 and await drained(n.client)

        await wait_until(flushed, f"{node.name}: a flush leaves nothing pending", limit)

        central = Client(f"127.0.0.1:{cluster.h2_port}", node.name)

        async def matched(n: EdgeNode = node, c: Client = central) -> bool:
            ok, _ = await checkpoints_match(n.client, c)
            return ok

        try:
            await wait_until(matched, f"{node.name}: edge acked sequences equal central's checkpoints", limit)
        finally:
            await central.close()
    tally = Tally()
    for node in nodes:
        for writer in node.writers:
            verdict = check_central(cluster.conninfo, node.name, writer.acked)
            tally.acked += writer.acked.items
            tally.lost += len(verdict.lost)
            tally.duplicated += len(verdict.duplicated)
            tally.wrong += len(verdict.wrong)
            tally.problems += (verdict.lost + verdict.duplicated + verdict.wrong)[:5]
        status = await node.client.status()
        tally.dead_letters += sum(q.dead_letters for q in status.queues)
    return tally


def assert_exact(scenario: str, tally: Tally) -> None:
    """0 lost, 0 duplicated, 0 wrong, 0 dead letters, and something was acknowledged at all."""
    assert tally.acked > 0, f"{scenario}: nothing was acknowledged"
    assert (tally.lost, tally.duplicated, tally.wrong, tally.dead_letters) == (0, 0, 0, 0), (
        f"{scenario}: lost={tally.lost} duplicated={tally.duplicated} wrong={tally.wrong} "
        f"dead_letters={tally.dead_letters}: {tally.problems[:10]}"
    )


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def spread(counts: dict[str, int]) -> float:
    """Largest deviation from an even split, as a share of the mean (0.0 = perfectly even)."""
    mean = sum(counts.values()) / len(counts)
    return max(abs(c - mean) for c in counts.values()) / mean if mean else 1.0
