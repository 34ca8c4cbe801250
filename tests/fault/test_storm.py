"""Reconnect storm: 1,000 edges in one process lose one real central process together and reconnect.

Each edge runs the edge's own sync code, in-process: ``GrpcCentral`` (its own channel from
``open_central_channel``, ``central_metadata`` for development auth, batches signed at send time), a
``SqliteOutbox``, ``SessionMemory`` on its own ``RedisCache`` (one real Redis server, a tenant per edge),
``LinkMonitor`` (periodic health checks, ``failureThreshold``) and ``SyncEngine``, whose ``resume`` runs when
the link comes back online. Only the observation is the test's: ``ObservedCentral`` writes down what the
edge's client sent, what central answered and when the first health check after the outage succeeded, and
calls ``GrpcCentral`` for the rest.

Every edge writes session 1 and sends its batch (sequence 1) with the client alone: central applies it and
acknowledges, but the ack never reaches the outbox (as when an edge dies between the two), so the outbox
still holds batch 1. Central is SIGKILLed; every edge's link monitor notices (OFFLINE); each edge writes
session 2 (batch 2, queued offline); central is restarted on the same port. Every link monitor reconnects
on its own schedule and the engine's ``resume`` reads central's checkpoint, drops what central already
applied (batch 1) and drains the rest (batch 2). Proves: central survives the storm and answers every edge;
every edge resumes from its checkpoint without resending acknowledged data (batch 1 never sent again, no
batch sent twice, each session at central exactly once); reconnects spread out (the reconnect-time
histogram's largest 100 ms bucket holds a small share of the edges: counts, never a latency).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aeterna.sync.v1 import sync_pb2

from aeterna_cli.processes import write_config
from aeterna_shared.config import AeternaConfig, load_config
from central_svc.store.embedded_postgres import EmbeddedPostgres
from edge_svc.api.central_client import GrpcCentral
from edge_svc.deps import central_link, outbox_limits
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory
from edge_svc.records import Ack, Channel, Checkpoints, Message, OutboxBatch, SessionRecord
from edge_svc.store.cache import RedisCache
from edge_svc.store.outbox import SqliteOutbox
from edge_svc.sync import SyncEngine
from tests.fault.support import central_document, edge_document, free_port, report, trials
from tests.support.services import ServiceFactory
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(600)]

_BUCKET = 0.1
_GATE = 100  # edges doing their set-up at once
# The edges' health checks: every 2 s (jittered by the monitor), 1 s deadline, OFFLINE after 2 failures.
_HEALTH = {"interval": "2s", "timeout": "1s", "failureThreshold": 2}


class ObservedCentral(GrpcCentral):
    """The edge's own client to central; records what it sent, what central answered and the checkpoints read."""

    def __init__(self, config: AeternaConfig, *, incarnation_id: str) -> None:
        super().__init__(central_link(config), incarnation_id=incarnation_id)
        self.sent: list[int] = []
        self.acks: list[Ack] = []
        self.checkpoints_read: list[int] = []
        self.failed_checks = 0
        self.outage_began = -1.0
        self.reconnected_at = -1.0
        """Seconds from ``outage_began`` to the start of the first health check central answered after it."""

    async def send(self, channel: Channel, batches: Sequence[OutboxBatch]) -> list[Ack]:
        self.sent.extend(b.sequence for b in batches)
        acks = await super().send(channel, batches)
        self.acks.extend(acks)
        return acks

    async def checkpoints(self, held: Mapping[Channel, Sequence[str]]) -> Checkpoints:
        found = await super().checkpoints(held)
        self.checkpoints_read.append(found.sequences.get(Channel.SESSIONS, 0))
        return found

    async def check_health(self, deadline_seconds: float) -> bool:
        asked = time.monotonic()  # when the monitor asked: completions bunch up whenever this loop is busy
        ok = await super().check_health(deadline_seconds)
        self.failed_checks += not ok
        if ok and self.outage_began >= 0 and self.reconnected_at < 0:
            self.reconnected_at = asked - self.outage_began
        return ok

    def forget(self) -> None:
        """Start recording afresh (the outage begins)."""
        self.sent.clear()
        self.acks.clear()
        self.checkpoints_read.clear()
        self.failed_checks = 0


class Edge:
    """One edge's sync side: outbox, session memory, client, link monitor and engine."""

    def __init__(self, index: int, base: AeternaConfig, redis_url: str, data_dir: Path) -> None:
        self.agent = f"storm-{index:04d}"
        edge = base.edge.model_copy(update={"agent_id": self.agent, "tenant_id": self.agent, "region": self.agent})
        self.config = base.model_copy(update={"edge": edge})
        self.outbox = SqliteOutbox(data_dir / f"{self.agent}.sqlite3", outbox_limits(self.config))
        self.cache = RedisCache(redis_url)
        self.sessions = SessionMemory(self.cache, self.config.cache.layers.session.ttl)
        self.central = ObservedCentral(self.config, incarnation_id=self.outbox.incarnation_id)
        self.link = LinkMonitor(self.config.central_server.health_check, self.central.check_health)
        self.engine: SyncEngine | None = None

    async def start(self) -> None:
        """The edge's first health check (online), then its engine, which resumes on every reconnect."""
        assert await self.link.check_once(), f"{self.agent}: central answers before the outage"
        self.engine = SyncEngine(self.config, self.outbox, self.central, self.link, self.sessions)

    async def write(self, sequence: int) -> None:
        """Write session ``sequence`` and collect it into the outbox as batch ``sequence``."""
        assert self.engine is not None
        session = SessionRecord(f"{self.agent}-s{sequence}", "u", [Message("user", f"{self.agent} batch {sequence}")])
        await self.sessions.put(self.agent, session)
        assert await self.engine.collect_sessions() == 1, f"{self.agent}: session {sequence} queued"

    async def send_losing_the_ack(self) -> list[int]:
        """Send the queued batches with the client alone: central applies them, the outbox keeps them."""
        pending = await asyncio.to_thread(self.outbox.pending, Channel.SESSIONS, 32)
        return [ack.sequence for ack in await self.central.send(Channel.SESSIONS, pending)]

    async def pending(self) -> int:
        return sum(s.pending_items for s in await asyncio.to_thread(self.outbox.stats))

    async def close(self) -> None:
        await self.link.stop()
        with contextlib.suppress(Exception):
            await self.central.close()
        self.outbox.close()
        await self.cache.close()


async def test_reconnect_storm(
    database_url: str,
    postgres_server: EmbeddedPostgres,
    services: ServiceFactory,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    count = trials(request.config, 1000, 3000)
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    port = free_port()
    central = services.make("central", "central", central_document(database_url, tmp_path / "central", port)).start()
    document = edge_document(
        tmp_path / "edge",
        port,
        "storm",
        **{"sync.centralServer.timeout": "30s", "sync.sessionMemory.maxRetries": 5},
    )
    document["centralServer"]["healthCheck"] = dict(_HEALTH)
    base = load_config(str(write_config(tmp_path / "edge.yaml", document)))
    edges = [Edge(i, base, redis_url, tmp_path / "outboxes") for i in range(count)]
    gate = asyncio.Semaphore(_GATE)

    async def before_outage(edge: Edge) -> list[int]:
        async with gate:
            await edge.start()
            await edge.write(1)
            return await edge.send_losing_the_ack()

    try:
        acked_before = await asyncio.gather(*(before_outage(e) for e in edges))
        assert all(a == [1] for a in acked_before), "central acknowledges every edge's batch 1 before the outage"
        loop = asyncio.get_running_loop()
        interval = base.central_server.health_check.interval.total_seconds()
        for edge in edges:
            edge.central.forget()
            # Edges started at different moments: each monitor's first periodic check at its own phase.
            loop.call_later(random.uniform(0, interval), edge.link.start)

        # Lose central together: SIGKILL; every edge's monitor takes it OFFLINE after failureThreshold checks.
        central.kill()
        began = time.monotonic()
        for edge in edges:
            edge.central.outage_began = began

        async def all_offline() -> bool:
            return not any(e.link.online for e in edges)

        await wait_until(all_offline, "every edge's link monitor took the edge offline", 60)

        async def offline_write(edge: Edge) -> None:
            async with gate:
                await edge.write(2)

        await asyncio.gather(*(offline_write(e) for e in edges))  # batch 2, written and queued while offline
        await asyncio.to_thread(central.start)  # same port (fixed in its configuration)
        restarted = time.monotonic() - began

        async def all_resumed() -> bool:
            return all(2 in {a.sequence for a in e.central.acks} for e in edges)

        await wait_until(all_resumed, "every edge reconnected and central acknowledged its batch 2", 120)
        assert await edges[0].central.check_health(10), "central serves after the storm"
        pending = [await e.pending() for e in edges]

        with psycopg.connect(conninfo) as conn:
            rows = conn.execute(
                "SELECT session_id, count(*) FROM session_memory WHERE session_id LIKE 'storm-%%' GROUP BY session_id"
            ).fetchall()
            checkpoints = conn.execute(
                "SELECT contiguous, count(*) FROM sync_checkpoints WHERE agent_id LIKE 'storm-%%' AND channel = %s "
                "GROUP BY contiguous",
                (int(sync_pb2.SYNC_CHANNEL_SESSIONS),),
            ).fetchall()
        sessions = {str(r[0]): int(r[1]) for r in rows}
        times = sorted(e.central.reconnected_at for e in edges)
        buckets = collections.Counter(int(t / _BUCKET) for t in times)
        largest = max(buckets.values())
        # Sends central would answer DUPLICATE: batch 1 (applied before the outage) or a batch sent twice.
        resent = sum(e.central.sent.count(1) for e in edges)
        sent_twice = sum(len(e.central.sent) - len(set(e.central.sent)) for e in edges)
        refused = [f for e in edges for a in e.central.acks for f in a.failures]
        histogram = " ".join(f"{b * _BUCKET:.1f}s:{n}" for b, n in sorted(buckets.items()))
        print(f"reconnect-time histogram (s since central was killed, 100 ms buckets): {histogram}", flush=True)
        report(
            "FAULT",
            "reconnect-storm",
            edges=count,
            resumed=sum(1 for e in edges if e.central.acks and e.central.acks[-1].sequence == 2),
            resent_acked_batches=resent,
            sent_twice=sent_twice,
            lost=sum(1 for e in edges for s in (1, 2) if sessions.get(f"{e.agent}-s{s}", 0) == 0),
            duplicated=sum(1 for n in sessions.values() if n > 1),
            checkpoints=dict(checkpoints),
            central_down_s=f"{restarted:.1f}",
            first_reconnect_s=f"{times[0]:.2f}",
            median_s=f"{times[len(times) // 2]:.2f}",
            last_s=f"{times[-1]:.2f}",
            buckets=len(buckets),
            largest_bucket=largest,
            middle_80pct_s=f"{times[int(0.9 * count)] - times[int(0.1 * count)]:.2f}",
            failed_health_checks=sum(e.central.failed_checks for e in edges),
            refused_items=len(refused),
            pending_items=sum(pending),
        )
        assert not refused, f"central refused items: {refused[:5]}"
        assert all(e.central.checkpoints_read[:1] == [1] for e in edges), (
            "every edge reads checkpoint 1 from central when it reconnects"
        )
        assert resent == 0, f"{resent} acknowledged batches were sent again"
        assert sent_twice == 0, f"{sent_twice} batches were sent twice"
        assert sum(pending) == 0, f"{sum(pending)} items left in the edges' outboxes"
        assert len(sessions) == 2 * count, f"central holds {len(sessions)} sessions, expected {2 * count}"
        assert all(n == 1 for n in sessions.values()), "a session is stored more than once"
        assert dict(checkpoints) == {2: count}, f"central's checkpoints: {dict(checkpoints)}"
        # Spread, by counts. A herd would put most edges in one slot. The 1,000 edges share this one event
        # loop, and when it stalls for a few hundred ms (resumes and drains are CPU work) the checks that
        # fell due meanwhile start together: that bunches up to ~20 % of the edges in one 100 ms slot on an
        # idle machine (a quarter is the bound), while the middle 80 % of reconnects still span at least
        # half a health-check interval, as jittered schedules do.
        assert largest <= count // 4, f"{largest} of {count} edges reconnected in one 100 ms bucket: {histogram}"
        assert len(buckets) >= 10, f"reconnects fell into only {len(buckets)} 100 ms buckets: {histogram}"
        middle = times[int(0.9 * count)] - times[int(0.1 * count)]
        assert middle >= interval / 2, f"the middle 80 % of reconnects took only {middle:.2f}s: {histogram}"
    finally:
        for edge in edges:
            await edge.close()
