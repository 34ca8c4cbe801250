"""Crash and restart: SIGKILL the edge mid-flush, mid-replay and mid-Authorize (in both
``aeterna.offline.decisionDurability`` modes), SIGKILL central mid-batch, restart
PostgreSQL mid-transaction, restart Redis under the edge — each ≥ 20 times at random moments.

Cheap trials: PostgreSQL (the session's ``postgres_server``) keeps running unless it is the process
under test, and only the process under test restarts. An agent writes in a loop (sessions, vectors,
decisions) while the edge flushes; the ledger holds only what the edge answered. After the last trial
the edge drains, and every acknowledged item must be at central exactly once with the same content
(read from central's PostgreSQL directly), and each channel's acked sequence at the edge must equal
central's ``GetSyncCheckpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2
from grpc import aio

from central_svc.store.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from central_svc.store.migrate import upgrade
from tests.fault.proxy import FaultProxy
from tests.fault.support import (
    ALLOW_ALL,
    Writer,
    central_document,
    check_central,
    checkpoints_match,
    drained,
    edge_document,
    free_port,
    report,
    trials,
)
from tests.support.clients import Client
from tests.support.postgres import TEST_VECTOR_DIMENSION
from tests.support.redis import answers
from tests.support.services import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(600)]

_SEED = 20240608


async def _write_for(writer: Writer, client: Client, seconds: float, *, flush: bool = True) -> int:
    """Write (and flush) for ``seconds``; errors while a process is down are expected and not acked."""
    errors = 0
    deadline = time.monotonic() + seconds

    async def flusher() -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(aio.AioRpcError):
                await client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=5)
            await asyncio.sleep(0.02)

    task = asyncio.ensure_future(flusher()) if flush else None
    try:
        while time.monotonic() < deadline:
            try:
                await writer.step(client)
            except aio.AioRpcError:
                errors += 1
                await asyncio.sleep(0.05)
    finally:
        if task is not None:
            await task
    return errors


async def _verify(
    scenario: str,
    writer: Writer,
    edge: Client,
    central: Client,
    conninfo: str,
    agent_id: str,
    trial_count: int,
    **extra: object,
) -> None:

    async def flushed() -> bool:
        # A flush collects the sessions still dirty in the cache, then drains every channel.
        reply = await edge.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=20)
        return reply.items_pending == 0 and await drained(edge)

    await wait_until(flushed, f"{scenario}: a flush leaves nothing pending at the edge")

    ok, pairs = False, dict[int, tuple[int, int]]()

    async def matched() -> bool:
        # Polled (wait_until retries an RPC error): central's per-agent rate limit is shared with the
        # edge's own sync traffic, so a check may be told RESOURCE_EXHAUSTED while the edge catches up.
        nonlocal ok, pairs
        ok, pairs = await checkpoints_match(edge, central)
        return ok

    with contextlib.suppress(BaseException):
        await wait_until(matched, f"{scenario}: the edge's acked sequences equal central's checkpoints", 30)
    assert ok, f"{scenario}: edge acked sequence != central checkpoint per channel (edge, central): {pairs}"
    verdict = check_central(conninfo, agent_id, writer.acked)
    status = await edge.status()
    dead = sum(q.dead_letters for q in status.queues)
    report(
        "FAULT",
        scenario,
        trials=trial_count,
        items=writer.acked.items,
        sessions=len(writer.acked.sessions),
        vectors=len(writer.acked.vectors),
        decisions=len(writer.acked.decisions),
        lost=len(verdict.lost),
        duplicated=len(verdict.duplicated),
        wrong=len(verdict.wrong),
        dead_letters=dead,
        checkpoints="/".join(f"{a}={b}" for a, b in pairs.values()),
        **extra,
    )
    assert verdict.lost == [], f"acknowledged items missing at central: {verdict.lost[:20]}"
    assert verdict.duplicated == [], f"items stored more than once: {verdict.duplicated[:20]}"
    assert verdict.wrong == [], f"items with different content at central: {verdict.wrong[:20]}"
    assert dead == 0


class Rig:
    """A central process on the test database, one edge process behind a fault proxy, and clients."""

    def __init__(self, services: ServiceFactory, tmp_path: Path, database_url: str, postgres: EmbeddedPostgres) -> None:
        self.services = services
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.conninfo = postgres.conninfo(urlsplit(database_url).path.lstrip("/"))
        self.central_port = free_port()
        self.central: ServiceProcess | None = None
        self.edge: ServiceProcess | None = None
        self.proxy: FaultProxy | None = None
        self.edge_client: Client | None = None
        self.central_client: Client | None = None

    async def start(self, agent_id: str, **edge_overrides: object) -> None:
        document = central_document(self.database_url, self.tmp_path / "central", self.central_port)
        self.central = self.services.make("central", "central", document).start()
        self.proxy = await FaultProxy(self.central_port).start()
        self.central_client = Client(self.central.target, agent_id)
        await self.central_client.publish(ALLOW_ALL)
        document = edge_document(self.tmp_path / agent_id, self.proxy.port, agent_id, **edge_overrides)
        self.edge = self.services.make("edge", agent_id, document).start()
        self.edge_client = Client(self.edge.target)

        async def online_with_bundle() -> bool:
            assert self.edge_client is not None
            status = await self.edge_client.status()
            return status.link_state == edge_pb2.LINK_STATE_ONLINE and status.policy_version > 0

        await wait_until(online_with_bundle, "the edge is online with the policy bundle")

    async def restart_edge(self) -> Client:
        assert self.edge is not None
        assert self.edge_client is not None
        self.edge.kill()
        await self.edge_client.close()
        self.edge.start()
        self.edge_client = Client(self.edge.target)
        return self.edge_client

    async def close(self) -> None:
        for client in (self.edge_client, self.central_client):
            if client is not None:
                await client.close()
        if self.proxy is not None:
            await self.proxy.close()


@pytest.fixture
async def rig(
    database_url: str, postgres_server: EmbeddedPostgres, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[Rig]:
    made = Rig(services, tmp_path, database_url, postgres_server)
    yield made
    await made.close()


async def _killed_after(delay: float, kill: Callable[[], None], work: Awaitable[int]) -> int:
    """Run ``work`` and SIGKILL (``kill``) after ``delay`` seconds, while it is still running."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(delay)
    kill()
    return await task


async def _bounced_during(delay: float, bounce: Callable[[], None], work: Awaitable[int]) -> int:
    """Run ``work``; after ``delay`` seconds run the blocking ``bounce`` (kill + restart) while it goes on."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(delay)
    await asyncio.to_thread(bounce)
    return await task


async def test_sigkill_edge_mid_flush(rig: Rig, request: pytest.FixtureRequest) -> None:
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED)
    agent = "edge-flush"
    await rig.start(agent)
    writer = Writer(agent, rng)
    assert rig.edge is not None
    assert rig.central_client is not None
    for _ in range(n):
        client = rig.edge_client
        assert client is not None
        edge = rig.edge
        await _killed_after(rng.uniform(0.05, 0.4), edge.kill, _write_for(writer, client, 0.45))
        client = await rig.restart_edge()
    assert rig.edge_client is not None
    await _verify("sigkill-edge-mid-flush", writer, rig.edge_client, rig.central_client, rig.conninfo, agent, n)


async def test_sigkill_edge_mid_replay(rig: Rig, request: pytest.FixtureRequest) -> None:
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED + 1)
    agent = "edge-replay"
    await rig.start(agent)
    writer = Writer(agent, rng)
    proxy = rig.proxy
    assert proxy is not None
    assert rig.central_client is not None
    for _ in range(n):
        client = rig.edge_client
        assert client is not None
        # Link down: the edge queues; link back: it replays while we kill it at a random point.
        proxy.mode = "refuse"
        proxy.cut()

        async def offline(c: Client = client) -> bool:
            return (await c.status()).link_state != edge_pb2.LINK_STATE_ONLINE

        await wait_until(offline, "the edge notices the link is down")
        await _write_for(writer, client, 0.4, flush=False)
        proxy.mode = "pass"
        edge = rig.edge
        assert edge is not None

        async def replay(c: Client = client) -> int:
            with contextlib.suppress(aio.AioRpcError):
                await c.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=5)
            return 0

        await _killed_after(rng.uniform(0.0, 0.8), edge.kill, replay())
        await rig.restart_edge()
    assert rig.edge_client is not None
    await _verify("sigkill-edge-mid-replay", writer, rig.edge_client, rig.central_client, rig.conninfo, agent, n)


async def _authorize_for(client: Client, acked: set[str], seconds: float, in_flight: int = 16) -> int:
    """Authorize from ``in_flight`` concurrent callers for ``seconds``; only answered decision ids are kept."""
    deadline = time.monotonic() + seconds
    errors = 0
    request = edge_pb2.AuthorizeRequest(principal='User::"a"', action='Action::"read"', resource='Doc::"d"')

    async def caller() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            try:
                reply = await client.edge.Authorize(request, timeout=5)
            except aio.AioRpcError:
                errors += 1
                await asyncio.sleep(0.05)
                continue
            acked.add(reply.decision_id)

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return errors


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_sigkill_edge_mid_authorize(rig: Rig, request: pytest.FixtureRequest, durability: str) -> None:
    """16 Authorize calls in flight, the edge SIGKILLed at a random moment, restarted: every answered decision
    reaches central exactly once, with ``decisionDurability: process`` (the default, no fsync before the answer)
    and ``power``."""
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED + 7)
    agent = f"edge-authorize-{durability}"
    overrides: dict[str, object] = {}
    if durability != "process":  # process is the default: the test runs it as shipped
        overrides["aeterna.offline.decisionDurability"] = durability
    await rig.start(agent, **overrides)
    writer = Writer(agent, rng)  # its ledger only: decisions answered by Authorize
    assert rig.central_client is not None
    for _ in range(n):
        client = rig.edge_client
        edge = rig.edge
        assert client is not None
        assert edge is not None
        await _killed_after(rng.uniform(0.1, 0.5), edge.kill, _authorize_for(client, writer.acked.decisions, 0.6))
        await rig.restart_edge()
    assert rig.edge_client is not None
    assert len(writer.acked.decisions) > n, "decisions were answered between the kills"
    await _verify(
        f"sigkill-edge-mid-authorize-{durability}",
        writer,
        rig.edge_client,
        rig.central_client,
        rig.conninfo,
        agent,
        n,
        durability=durability,
    )


async def test_sigkill_central_mid_batch(rig: Rig, request: pytest.FixtureRequest) -> None:
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED + 2)
    agent = "edge-central-kill"
    await rig.start(agent)
    writer = Writer(agent, rng)
    assert rig.central is not None
    assert rig.edge_client is not None
    assert rig.central_client is not None
    errors = 0
    for _ in range(n):
        errors += await _killed_after(
            rng.uniform(0.05, 0.35), rig.central.kill, _write_for(writer, rig.edge_client, 0.4)
        )
        rig.central.start()
    await _verify(
        "sigkill-central-mid-batch",
        writer,
        rig.edge_client,
        rig.central_client,
        rig.conninfo,
        agent,
        n,
        refused_writes=errors,
    )


@pytest.fixture
def durable_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, with its real durability settings.

    The session's shared test server runs with ``synchronous_commit=off`` for
    speed, and a server killed in that mode may lose commits it had already
    acknowledged: crashing *it* would test the fixture, not central.
    """
    server = EmbeddedPostgres(tmp_path / "durable-postgres")
    server.start()
    upgrade(server.url_for("postgres"), vector_dimension=TEST_VECTOR_DIMENSION)
    try:
        yield server
    finally:
        with contextlib.suppress(EmbeddedPostgresError):
            server.stop()


async def test_postgres_restart_mid_transaction(
    request: pytest.FixtureRequest, durable_postgres: EmbeddedPostgres, services: ServiceFactory, tmp_path: Path
) -> None:
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED + 3)
    agent = "edge-pg-restart"
    postgres_server = durable_postgres
    rig = Rig(services, tmp_path, durable_postgres.url_for("postgres"), durable_postgres)
    try:
        await _postgres_trials(rig, n, rng, agent, postgres_server)
    finally:
        await rig.close()


async def _postgres_trials(rig: Rig, n: int, rng: random.Random, agent: str, postgres_server: EmbeddedPostgres) -> None:
    await rig.start(agent)
    writer = Writer(agent, rng)
    assert rig.edge_client is not None
    assert rig.central_client is not None
    kills = 0

    def crash() -> None:
        # Signals only (no fork while gRPC threads run): a SIGKILL of the postmaster and its backends
        # (in-flight transactions are lost and roll back in recovery), or SIGINT, PostgreSQL's fast
        # shutdown (open transactions are rolled back, clients disconnected).
        nonlocal kills
        if rng.random() < 0.5:
            postgres_server.kill()
            kills += 1
            return
        pid = postgres_server.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while postgres_server.is_running() and time.monotonic() < deadline:
            time.sleep(0.02)

    for _ in range(n):
        await _bounced_during(rng.uniform(0.05, 0.35), crash, _write_for(writer, rig.edge_client, 0.4))
        await asyncio.to_thread(postgres_server.start)
    await _verify(
        "postgres-restart-mid-transaction",
        writer,
        rig.edge_client,
        rig.central_client,
        rig.conninfo,
        agent,
        n,
        sigkills=kills,
    )


def _redis_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_redis(url: str) -> None:
    if not answers(url):
        raise AssertionError("redis-server did not answer after a restart")


async def test_redis_restart_under_the_edge(rig: Rig, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The edge uses a redis-server the test owns (AOF, fsync always): a SIGKILL of Redis is a restart,
    not a wipe. Acknowledged sessions live only in Redis until collected, so this is the interesting case."""
    n = trials(request.config, 20, 200)
    rng = random.Random(_SEED + 4)
    agent = "edge-redis"
    directory = tmp_path / "redis"
    directory.mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = _redis_server(directory, port)
    try:
        _wait_redis(url)
        await rig.start(agent, **{"cache.url": url, "sync.sessionMemory.interval": "300ms"})
        writer = Writer(agent, rng)
        assert rig.edge_client is not None
        assert rig.central_client is not None
        errors = 0
        for _ in range(n):

            def bounce() -> None:
                nonlocal process
                process.kill()
                process.wait(10)
                process = _redis_server(directory, port)
                _wait_redis(url)

            errors += await _bounced_during(rng.uniform(0.05, 0.35), bounce, _write_for(writer, rig.edge_client, 0.4))
        await _verify(
            "redis-restart-under-edge",
            writer,
            rig.edge_client,
            rig.central_client,
            rig.conninfo,
            agent,
            n,
            refused_writes=errors,
        )
    finally:
        process.kill()
        process.wait(10)


_ = grpc
