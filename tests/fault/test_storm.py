"""Reconnect storm: 1,000 simulated edges lose one real central process together and reconnect.

Each simulated edge is a lightweight client in this process (its own gRPC channel, development auth
``x-aeterna-agent-id``, batches signed with ``aeterna_shared.wire.canonical.sign_batch`` and the development
key) that retries with the edge's own ``edge_svc.backoff.backoff_delay`` (exponential, full jitter).
Every edge syncs batch 1 (acknowledged), central is SIGKILLed and restarted on the same port, and every
edge health-checks with backoff until central answers, reads its checkpoint (``GetSyncCheckpoint``),
sends only what is above it (batch 2) and is done. Proves: central survives the storm and answers every
edge; every edge resumes from its checkpoint without resending acknowledged data (no DUPLICATE ack, no
batch at or below the checkpoint sent again, each session at central exactly once); reconnects spread
out (the reconnect-time histogram's largest 100 ms bucket holds a small share of the edges).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_shared.wire.canonical import session_checksum, sign_batch
from central_svc.store.embedded_postgres import EmbeddedPostgres
from edge_svc.backoff import backoff_delay
from tests.fault.support import central_document, free_port, report, trials
from tests.support.services import ServiceFactory

pytestmark = [pytest.mark.ci_slow, pytest.mark.timeout(600)]

_BASE = 0.2  # the edge's retry base for a 200 ms..1 s health interval
_CAP = 5.0
_BUCKET = 0.1


class SimEdge:
    """One simulated edge: identity, channel, what it sent and what central answered."""

    def __init__(self, index: int, target: str) -> None:
        self.agent = f"storm-{index:04d}"
        self.metadata = (("x-aeterna-agent-id", self.agent),)
        self.channel = aio.insecure_channel(target)
        self.sync = sync_pb2_grpc.SyncServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.sent: list[int] = []
        self.acked = 0
        self.duplicate_acks = 0
        self.refused = 0
        self.failures: list[str] = []
        self.attempts = 0
        self.reconnected_at = 0.0
        self.checkpoint = -1
        self.errors: collections.Counter[str] = collections.Counter()

    def batch(self, sequence: int) -> sync_pb2.SyncSessionsRequest:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        request = sync_pb2.SyncSessionsRequest(
            header=sync_pb2.BatchHeader(
                batch_id=f"{self.agent}-b{sequence}", sequence=sequence, agent_id=self.agent, sent_time=now
            ),
            sessions=[
                memory_pb2.Session(
                    session_id=f"{self.agent}-s{sequence}",
                    user_id="u",
                    last_activity_time=now,
                    messages=[memory_pb2.SessionMessage(role="user", content=f"{self.agent} batch {sequence}")],
                )
            ],
        )
        for session in request.sessions:
            session.checksum = session_checksum(session)
        sign_batch(request, DEVELOPMENT_KEY)
        return request

    async def send(self, sequence: int) -> None:
        self.sent.append(sequence)
        call = self.sync.SyncSessions(metadata=self.metadata, timeout=30)
        await call.write(self.batch(sequence))
        await call.done_writing()
        reply = await call.read()
        assert reply is not aio.EOF, f"{self.agent}: no ack for batch {sequence}"
        if reply.ack.status == sync_pb2.ACK_STATUS_DUPLICATE:
            self.duplicate_acks += 1
        self.refused += int(reply.ack.failed)
        self.failures.extend(f"{f.reason}: {f.message}" for f in reply.ack.failures)
        self.acked = max(self.acked, int(reply.ack.sequence))

    async def reconnect(self, began: float, limit: float) -> None:
        """Health-check with backoff + jitter until central answers, then resume from its checkpoint."""
        deadline = time.monotonic() + limit
        while True:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except aio.AioRpcError as error:
                self.errors[error.code().name] += 1
            assert time.monotonic() < deadline, f"{self.agent}: central did not answer within {limit:.0f}s"
            await asyncio.sleep(backoff_delay(self.attempts, _BASE, _CAP))
            self.attempts += 1
        self.reconnected_at = time.monotonic() - began
        reply = await self.sync.GetSyncCheckpoint(
            sync_pb2.GetSyncCheckpointRequest(), metadata=self.metadata, timeout=30
        )
        self.checkpoint = {c.channel: int(c.sequence) for c in reply.checkpoints}.get(sync_pb2.SYNC_CHANNEL_SESSIONS, 0)
        for sequence in (1, 2):  # the local outbox: batch 1 (acked before the crash), batch 2 (new)
            if sequence > self.checkpoint:
                await self.send(sequence)


async def test_reconnect_storm(
    database_url: str,
    postgres_server: EmbeddedPostgres,
    services: ServiceFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    count = trials(request.config, 1000, 3000)
    conninfo = postgres_server.conninfo(urlsplit(database_url).path.lstrip("/"))
    port = free_port()
    central = services.make("central", "central", central_document(database_url, tmp_path / "central", port)).start()
    edges = [SimEdge(i, central.target) for i in range(count)]
    gate = asyncio.Semaphore(100)

    async def first(edge: SimEdge) -> None:
        async with gate:
            await edge.send(1)

    try:
        await asyncio.gather(*(first(e) for e in edges))
        assert all(e.acked == 1 for e in edges), "every edge's first batch is acknowledged before the outage"
        for edge in edges:
            edge.sent.clear()
        # Lose central together: SIGKILL, every edge starts reconnecting at once.
        central.kill()
        began = time.monotonic()
        storm = [asyncio.ensure_future(e.reconnect(began, 120)) for e in edges]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(central.start)  # same port (fixed in its configuration)
        restarted = time.monotonic() - began
        await asyncio.gather(*storm)

        health = await edges[0].health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, "central serves after the storm"
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
        times = sorted(e.reconnected_at for e in edges)
        buckets = collections.Counter(int(t / _BUCKET) for t in times)
        largest = max(buckets.values())
        resent = sum(1 for e in edges for s in e.sent if s <= e.checkpoint or s == 1)
        duplicates = sum(e.duplicate_acks for e in edges)
        errors: collections.Counter[str] = collections.Counter()
        for edge in edges:
            errors.update(edge.errors)
        histogram = " ".join(f"{b * _BUCKET:.1f}s:{n}" for b, n in sorted(buckets.items()))
        print(f"reconnect-time histogram (s since central was killed, 100 ms buckets): {histogram}", flush=True)
        report(
            "FAULT",
            "reconnect-storm",
            edges=count,
            resumed=sum(1 for e in edges if e.acked == 2),
            resent_acked_batches=resent,
            duplicate_acks=duplicates,
            lost=sum(1 for e in edges for s in (1, 2) if sessions.get(f"{e.agent}-s{s}", 0) == 0),
            duplicated=sum(1 for n in sessions.values() if n > 1),
            checkpoints=dict(checkpoints),
            central_down_s=f"{restarted:.1f}",
            first_reconnect_s=f"{times[0]:.2f}",
            median_s=f"{times[len(times) // 2]:.2f}",
            last_s=f"{times[-1]:.2f}",
            buckets=len(buckets),
            largest_bucket=largest,
            health_retries=sum(e.attempts for e in edges),
            errors=dict(errors),
            refused_items=sum(e.refused for e in edges),
        )
        assert all(e.refused == 0 for e in edges), (
            f"central refused items: {[f for e in edges for f in e.failures][:5]}"
        )
        assert all(e.checkpoint == 1 for e in edges), "every edge reads checkpoint 1 from central after the restart"
        assert resent == 0, f"{resent} acknowledged batches were sent again"
        assert duplicates == 0, f"central answered DUPLICATE {duplicates} times"
        assert all(e.acked == 2 for e in edges), "every edge's new batch is acknowledged after reconnecting"
        assert len(sessions) == 2 * count, f"central holds {len(sessions)} sessions, expected {2 * count}"
        assert all(n == 1 for n in sessions.values()), "a session is stored more than once"
        assert dict(checkpoints) == {2: count}, f"central's checkpoints: {dict(checkpoints)}"
        # Spread, by counts: with backoff + jitter no 100 ms slot takes more than a fifth of the edges.
        assert largest <= count // 5, f"{largest} of {count} edges reconnected in one 100 ms bucket: {histogram}"
        assert len(buckets) >= 10, f"reconnects fell into only {len(buckets)} 100 ms buckets: {histogram}"
    finally:
        for edge in edges:
            with contextlib.suppress(Exception):
                await edge.channel.close()
