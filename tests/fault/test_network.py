"""Network faults between a real edge process and a real central process, through ``proxy.FaultProxy``:
a cut (RST) during sync streams, a stall longer than the deadline (blackhole), a half-open connection
(frozen), and a one-hour outage with a controllable clock and 10,000 queued decisions (overflow + TTL).

The first three use the crash suite's rig (central on the test database, the edge's
``sync.centralServer`` pointing at the proxy) and its invariant: after the link heals every acknowledged
item is at central exactly once with the acknowledged content, and each channel's acked sequence at the
edge equals central's ``GetSyncCheckpoint``. The outage runs in-process (a ``SqliteOutbox`` with an injected
clock under the edge's own ``SyncEngine``/``GrpcCentral``/``LinkMonitor``) against a real central
process, a real PostgreSQL and a real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.sync.v1 import sync_pb2
from grpc import aio
from prometheus_client import CollectorRegistry

from aeterna_cli.processes import write_config
from aeterna_shared.config import load_config
from central_svc.store.embedded_postgres import EmbeddedPostgres
from edge_svc.api.central_client import GrpcCentral
from edge_svc.deps import central_link, outbox_limits
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory
from edge_svc.metrics import OutboxCollector
from edge_svc.records import Channel, DecisionRecord
from edge_svc.store.cache import RedisCache
from edge_svc.store.outbox import SqliteOutbox
from edge_svc.sync import SyncEngine
from tests.fault.proxy import FaultProxy
from tests.fault.support import ALLOW_ALL, Writer, central_document, edge_document, report, trials
from tests.fault.test_crash import Rig, _verify, _write_for
from tests.support.clients import Client
from tests.support.services import ServiceFactory
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(600)]

_SEED = 20240611


class HalfOpenProxy(FaultProxy):
    """``freeze_open()``: the connections open now stop forwarding for good in both directions, without
    FIN or RST (the peer vanished: a half-open link); connections opened later pass normally."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self._stuck: set[asyncio.StreamWriter] = set()

    def freeze_open(self) -> int:
        self._stuck = set(self._writers)
        return len(self._stuck) // 2

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if writer in self._stuck:
                    continue  # swallowed: the sender's bytes vanish, nothing comes back
                if upstream:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def rig(
    database_url: str, postgres_server: EmbeddedPostgres, services: ServiceFactory, tmp_path: Path
) -> AsyncIterator[Rig]:
    made = Rig(services, tmp_path, database_url, postgres_server)
    yield made
    await made.close()


async def _offline(client: Client, what: str) -> None:
    async def check() -> bool:
        return (await client.status()).link_state != edge_pb2.LINK_STATE_ONLINE

    await wait_until(check, what, 30)


async def _online(client: Client, what: str, limit: float = 60.0) -> None:
    async def check() -> bool:
        return (await client.status()).link_state == edge_pb2.LINK_STATE_ONLINE

    await wait_until(check, what, limit)


def _codes(log: str) -> dict[str, int]:
    return {code: log.count(code) for code in ("DEADLINE_EXCEEDED", "UNAVAILABLE") if code in log}


async def test_cut_during_sync_streams(rig: Rig, request: pytest.FixtureRequest) -> None:
    """RST every open connection at a random moment while sessions/vectors stream and decisions replay."""
    n = trials(request.config, 12, 120)
    rng = random.Random(_SEED)
    agent = "edge-cut"
    # Small stream windows: many SyncSessions/SyncVectors streams, each several batches long.
    await rig.start(agent, **{"sync.batch.maxSize": 2, "sync.episodicMemory.vectorSync.batchSize": 2})
    proxy, client, central, edge = rig.proxy, rig.edge_client, rig.central_client, rig.edge
    assert edge is not None
    assert proxy is not None
    assert client is not None
    assert central is not None
    writer = Writer(agent, rng)
    proxy.delay = 0.003  # every chunk is slowed a little so that a cut lands inside a stream
    cuts = mid_transfer = 0
    for _ in range(n):
        task = asyncio.ensure_future(_write_for(writer, client, 0.6))
        await asyncio.sleep(rng.uniform(0.1, 0.4))
        for _ in range(100):  # cut while bytes are moving toward central (inside a call), if that happens soon
            before = proxy.bytes_up
            await asyncio.sleep(0.002)
            if proxy.bytes_up > before:
                mid_transfer += 1
                break
        proxy.cut()
        cuts += 1
        await task
    proxy.delay = 0.0
    log = edge.log_text()
    broken = {c: len(re.findall(rf"sending \d+ {c} batches failed", log)) for c in ("sessions", "vectors", "decisions")}
    await _verify(
        "cut-during-stream",
        writer,
        client,
        central,
        rig.conninfo,
        agent,
        n,
        rst_cuts=cuts,
        cuts_mid_transfer=mid_transfer,
        failed_sends=broken,
    )
    assert broken["sessions"] + broken["vectors"] > 0, f"no SyncSessions/SyncVectors stream was cut mid-batch: {broken}"


async def test_stall_longer_than_deadline(rig: Rig, request: pytest.FixtureRequest) -> None:
    """Blackhole: connections are accepted, nothing ever answers; calls must end by their deadline."""
    n = trials(request.config, 3, 20)
    rng = random.Random(_SEED + 1)
    agent = "edge-stall"
    await rig.start(agent, **{"sync.centralServer.timeout": "1s"})
    proxy, client, central, edge = rig.proxy, rig.edge_client, rig.central_client, rig.edge
    assert proxy is not None
    assert client is not None
    assert central is not None
    assert edge is not None
    writer = Writer(agent, rng)
    stalled_flushes = 0
    for _ in range(n):
        await _write_for(writer, client, 0.3)
        proxy.mode = "blackhole"
        accepted = proxy.accepted
        proxy.cut()  # the live connection goes; every reconnect lands in the blackhole
        # Writes go on: answered from the edge, queued in the outbox.
        flush = asyncio.ensure_future(client.edge.FlushSync(edge_pb2.FlushSyncRequest(), timeout=30))
        await _write_for(writer, client, 0.3, flush=False)
        await _offline(client, "the edge goes offline after failureThreshold health checks hit their deadline")
        with contextlib.suppress(aio.AioRpcError):
            await flush  # bounded: ends once its sends fail by deadline and the link is offline
        stalled_flushes += 1
        assert proxy.accepted > accepted, "the stall never received a connection (it was a refusal, not a stall)"
        await _write_for(writer, client, 0.3, flush=False)
        proxy.mode = "pass"
        await _online(client, "the edge comes back online after the stall ends")
    codes = _codes(edge.log_text())
    await _verify(
        "stall-past-deadline", writer, client, central, rig.conninfo, agent, n, stalled_flushes=stalled_flushes, **codes
    )
    assert codes.get("DEADLINE_EXCEEDED", 0) > 0, f"no call to central failed by deadline during the stalls: {codes}"


@pytest.fixture
async def half_open_rig(
    database_url: str,
    postgres_server: EmbeddedPostgres,
    services: ServiceFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Rig]:
    monkeypatch.setattr("tests.fault.test_crash.FaultProxy", HalfOpenProxy)
    made = Rig(services, tmp_path, database_url, postgres_server)
    yield made
    await made.close()


async def test_half_open_connection(half_open_rig: Rig, request: pytest.FixtureRequest) -> None:
    """The edge's live connection goes silent forever (no FIN, no RST) while new connections work:
    the edge must notice (health checks by deadline), queue, and get back online by itself."""
    rig = half_open_rig
    n = trials(request.config, 3, 20)
    rng = random.Random(_SEED + 2)
    agent = "edge-half-open"
    await rig.start(agent, **{"sync.centralServer.timeout": "1s"})
    proxy, client, central, edge = rig.proxy, rig.edge_client, rig.central_client, rig.edge
    assert isinstance(proxy, HalfOpenProxy)
    assert client is not None
    assert central is not None
    assert edge is not None
    writer = Writer(agent, rng)
    frozen = 0
    for _ in range(n):
        await _write_for(writer, client, 0.3)
        frozen += proxy.freeze_open()
        await _write_for(writer, client, 0.3, flush=False)
        await _offline(client, "the edge goes offline while its connection is half-open")
        await _write_for(writer, client, 0.3, flush=False)
        await _online(client, "the edge abandons the half-open connection and comes back online", 30)
    await _verify("half-open", writer, client, central, rig.conninfo, agent, n, frozen_connections=frozen)


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


_TICKS = 100
_PER_TICK = 100
_TICK_SECONDS = 36.0  # 100 ticks = one hour offline
_MAX_QUEUE = 8_000
_TTL_SECONDS = 3_600.0


async def test_one_hour_outage_overflow_and_ttl(
    database_url: str,
    postgres_server: EmbeddedPostgres,
    services: ServiceFactory,
    tmp_path: Path,
    redis_url: str,
    request: pytest.FixtureRequest,
) -> None:
    """10,000 decisions queued over a simulated hour offline (100 per 36 s), maxQueueSize 8,000 and queueTTL
    1 h, reconnect at 1 h 18 min: the 2,000 oldest overflow, the next 1,100 expire, 6,900 reach central once.
    """
    agent = "edge-outage"
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    central_proc = services.make("central", "central", central_document(database_url, tmp_path / "central")).start()
    central_client = Client(central_proc.target, agent)
    await central_client.publish(ALLOW_ALL)
    proxy = await FaultProxy(central_proc.port).start()
    document = edge_document(
        tmp_path / agent,
        proxy.port,
        agent,
        **{
            "cache.url": redis_url,
            "sync.batch.maxSize": 50,
            "aeterna.offline.maxQueueSize": _MAX_QUEUE,
            "sync.offline.queueTTL": "1h",
        },
    )
    config = load_config(str(write_config(tmp_path / "edge.yaml", document)))
    start = time.time() - 2 * 3600  # decisions happened in the past two hours
    clock = FakeClock(start)
    outbox = SqliteOutbox(tmp_path / agent / "outbox.sqlite3", outbox_limits(config), clock=clock)
    cache = RedisCache(config.cache.url or redis_url)
    central = GrpcCentral(central_link(config))
    link = LinkMonitor(config.central_server.health_check, central.check_health)
    engine = SyncEngine(config, outbox, central, link, SessionMemory(cache, config.cache.layers.session.ttl))
    registry = CollectorRegistry()
    registry.register(OutboxCollector(outbox, lambda: link.online, lambda: 1))
    engine.start()  # the group-commit writer; drains run only while the link is online
    try:
        assert await link.check_once(), "central is reachable before the outage"
        # The outage: the link refuses; failureThreshold failed checks and the edge is offline.
        proxy.mode = "refuse"
        proxy.cut()
        for _ in range(config.central_server.health_check.failure_threshold):
            await link.check_once()
        assert not link.online, "the edge went offline after failureThreshold failed health checks"

        ticks: list[list[str]] = []
        for tick in range(_TICKS):
            clock.now = start + tick * _TICK_SECONDS
            ids = [str(uuid.uuid4()) for _ in range(_PER_TICK)]
            decided = int(clock.now * 1e9)
            await asyncio.gather(
                *(
                    engine.record_decision(
                        DecisionRecord(d, decided, 'User::"a"', 'Action::"read"', 'Doc::"d"', True, 1, offline=True)
                    )
                    for d in ids
                )
            )
            ticks.append(ids)
        queued = sum(len(t) for t in ticks)
        # The link comes back 1 h 18 min after the first queued decision: ticks 0..30 are older than the TTL.
        clock.now = start + _TTL_SECONDS + 30 * _TICK_SECONDS + 1
        overflow_ticks = (_TICKS * _PER_TICK - _MAX_QUEUE) // _PER_TICK
        expired_ticks = 31 - overflow_ticks
        want_overflow = {d for t in ticks[:overflow_ticks] for d in t}
        want_expired = {d for t in ticks[overflow_ticks:31] for d in t}
        want_delivered = {d for t in ticks[31:] for d in t}
        proxy.mode = "pass"

        async def reconnected() -> bool:  # the link monitor's periodic check, run by hand
            return await link.check_once()

        await wait_until(reconnected, "a health check succeeds once the link is back")

        async def drained() -> bool:
            stats = {s.channel: s for s in await asyncio.to_thread(outbox.stats)}
            return stats[Channel.DECISIONS].pending_items == 0

        await wait_until(drained, "the edge replays every queued decision after reconnecting", 240)
        stats = {s.channel: s for s in outbox.stats()}
        counts = {(c, cause): n for c, cause, n in outbox.dead_letter_counts()}
        metric = {
            cause: registry.get_sample_value("aeterna_dead_letters_total", {"channel": "decisions", "cause": cause})
            for cause in ("overflow", "expired")
        }
        # What the dead-letter store holds, by cause (read from its payloads).
        stored: dict[str, set[str]] = {"overflow": set(), "expired": set()}
        with contextlib.closing(sqlite3.connect(tmp_path / agent / "outbox.sqlite3")) as db:
            for reason, payload in db.execute("SELECT reason, payload FROM dead_letters WHERE channel = 'decisions'"):
                stored.setdefault(reason, set()).update(item["id"] for item in json.loads(payload))
        every = want_overflow | want_expired | want_delivered
        with psycopg.connect(conninfo) as conn:
            rows = conn.execute(
                "SELECT decision_id, count(*) FROM decisions WHERE decision_id = ANY(%s) GROUP BY decision_id",
                (list(every),),
            ).fetchall()
        at_central = {str(r[0]) for r in rows}
        duplicated = [str(r[0]) for r in rows if r[1] > 1]
        reply = await central_client.sync.GetSyncCheckpoint(
            sync_pb2.GetSyncCheckpointRequest(), metadata=central_client.metadata
        )
        central_cp = {c.channel: int(c.sequence) for c in reply.checkpoints}.get(sync_pb2.SYNC_CHANNEL_DECISIONS, 0)
        report(
            "FAULT",
            "outage-1h-overflow-ttl",
            queued=queued,
            simulated_offline_s=int(clock.now - start),
            overflow=counts.get((Channel.DECISIONS, "overflow"), 0),
            expired=counts.get((Channel.DECISIONS, "expired"), 0),
            dead_letters=stats[Channel.DECISIONS].dead_letters,
            metric_overflow=metric["overflow"],
            metric_expired=metric["expired"],
            delivered=len(at_central & want_delivered),
            lost=len(want_delivered - at_central),
            duplicated=len(duplicated),
            dropped_at_central=len(at_central & (want_overflow | want_expired)),
            checkpoint=f"{stats[Channel.DECISIONS].acked_sequence}={central_cp}",
        )
        assert stored["overflow"] == want_overflow, "the overflow dead letters are exactly the oldest 2,000 decisions"
        assert stored["expired"] == want_expired, "the expired dead letters are exactly the decisions past the TTL"
        assert counts == {
            (Channel.DECISIONS, "overflow"): overflow_ticks * _PER_TICK,
            (Channel.DECISIONS, "expired"): expired_ticks * _PER_TICK,
        }, f"dead_letter_counts() must match what was dropped: {counts}"
        assert stats[Channel.DECISIONS].dead_letters == len(want_overflow) + len(want_expired)
        assert metric == {"overflow": float(len(want_overflow)), "expired": float(len(want_expired))}
        assert want_delivered <= at_central, f"{len(want_delivered - at_central)} queued decisions missing at central"
        assert duplicated == [], f"decisions stored twice at central: {duplicated[:10]}"
        assert not at_central & (want_overflow | want_expired), "a dead-lettered decision reached central anyway"
        # Dead-lettered batches leave a gap in the edge's sequences that central never sees; the edge's
        # floor_sequence lets central's checkpoint move past it (this once stuck below the gap forever).
        assert stats[Channel.DECISIONS].acked_sequence == central_cp, (
            f"central's decisions checkpoint {central_cp} differs from the edge's acked sequence "
            f"{stats[Channel.DECISIONS].acked_sequence}"
        )
    finally:
        await engine.stop()
        await link.stop()
        await central.close()
        await cache.close()
        outbox.close()
        await central_client.close()
        await proxy.close()
