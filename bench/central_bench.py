"""Central ingest and replay throughput, each next to a limit measured in the same run.

    python -m bench.central_bench            # full run
    python -m bench.central_bench --quick    # seconds, for CI smoke

Prints:

* sessions/s through gRPC ``SyncSessions`` (signed batches, one pipelined
  stream, in-process server on a real embedded PostgreSQL), next to the raw
  PostgreSQL upsert rate of the very same rows with the very same statement
  (psycopg, no gRPC, no validation), and their ratio (goal >= 0.6);
* decisions/s through ``ReplayDecisions`` with a share of conflicts (goal >= 5,000/s).

The client runs in the same process as the server, so the gRPC figure also
pays for the client's share of the CPU: the ratio is a lower bound.
No timing is asserted anywhere; these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from aeterna.memory.v1 import memory_pb2
from aeterna.policy.v1 import decision_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc import aio

from aeterna_shared.config import AeternaConfig
from central_svc.deps import build_deps
from central_svc.server import create_server
from central_svc.store.database import Database
from central_svc.store.embedded_postgres import EmbeddedPostgres
from central_svc.store.migrate import upgrade
from central_svc.store.sessions import UPSERT
from central_svc.store.urls import psycopg_conninfo
from interceptors.canonical import session_checksum, sign_batch
from interceptors.keys import DEVELOPMENT_KEY

AGENT = "bench-edge"
METADATA = (("x-aeterna-agent-id", AGENT), ("x-aeterna-tenant-id", "default"))


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def make_sessions(count: int, payload_bytes: int) -> list[memory_pb2.Session]:
    now = datetime.now(UTC)
    filler = "x" * payload_bytes
    sessions = []
    for n in range(count):
        session = memory_pb2.Session(
            session_id=f"bench-{n}",
            user_id=f"user-{n % 97}",
            messages=[memory_pb2.SessionMessage(role="user", content=filler)],
            last_activity_time=stamp(now),
        )
        session.state.update({"turn": n})
        session.checksum = session_checksum(session)
        sessions.append(session)
    return sessions


def header(sequence: int) -> sync_pb2.BatchHeader:
    return sync_pb2.BatchHeader(
        batch_id=str(uuid.uuid4()),
        sequence=sequence,
        agent_id=AGENT,
        region="bench",
        sent_time=stamp(datetime.now(UTC)),
    )


async def raw_upsert(conninfo: str, sessions: list[memory_pb2.Session], batch: int) -> float:
    """Rows/s of the same upsert statement straight through psycopg, one transaction per batch."""
    rows = [
        (
            s.session_id,
            s.user_id,
            s.SerializeToString(deterministic=True),
            s.last_activity_time.ToDatetime(tzinfo=UTC),
            s.checksum,
        )
        for s in sessions
    ]
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
        started = time.perf_counter()
        for offset in range(0, len(rows), batch):
            chunk = rows[offset : offset + batch]
            async with connection.transaction():
                await connection.execute(
                    UPSERT,
                    {
                        "tenant": "default",
                        "agent": AGENT,
                        "ids": [r[0] for r in chunk],
                        "users": [r[1] for r in chunk],
                        "data": [r[2] for r in chunk],
                        "times": [r[3] for r in chunk],
                        "sums": [r[4] for r in chunk],
                    },
                )
        elapsed = time.perf_counter() - started
        await connection.execute("TRUNCATE session_memory")
    return len(rows) / elapsed


async def grpc_ingest(target: str, sessions: list[memory_pb2.Session], batch: int) -> float:
    """Sessions/s through SyncSessions on one pipelined stream (requests built and signed beforehand)."""
    requests = []
    for sequence, offset in enumerate(range(0, len(sessions), batch), start=1):
        request = sync_pb2.SyncSessionsRequest(header=header(sequence), sessions=sessions[offset : offset + batch])
        sign_batch(request, DEVELOPMENT_KEY)
        requests.append(request)
    async with aio.insecure_channel(target) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        started = time.perf_counter()
        acks = [r.ack async for r in stub.SyncSessions(iter(requests), metadata=METADATA)]
        elapsed = time.perf_counter() - started
    assert sum(a.processed for a in acks) == len(sessions), "not every session was applied"
    return len(sessions) / elapsed


def decision(decision_id: str, resource: str, at: datetime) -> decision_pb2.Decision:
    return decision_pb2.Decision(
        decision_id=decision_id,
        decide_time=stamp(at),
        principal='User::"u"',
        action='Action::"a"',
        resource=resource,
        effect=decision_pb2.EFFECT_ALLOW,
    )


async def replay(target: str, count: int, conflict_share: float, batch: int) -> tuple[float, dict[str, int]]:
    """Decisions/s through ReplayDecisions; ``conflict_share`` of them meet a later central decision."""
    base = datetime.now(UTC) - timedelta(hours=1)
    seeded = int(count * conflict_share)
    async with aio.insecure_channel(target) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        sequence = 0

        async def send(decisions: list[decision_pb2.Decision], agent: str) -> sync_pb2.ReplayDecisionsResponse:
            nonlocal sequence
            sequence += 1
            request = sync_pb2.ReplayDecisionsRequest(header=header(sequence), decisions=decisions)
            request.header.agent_id = agent
            sign_batch(request, DEVELOPMENT_KEY)
            metadata = (("x-aeterna-agent-id", agent), ("x-aeterna-tenant-id", "default"))
            response: sync_pb2.ReplayDecisionsResponse = await stub.ReplayDecisions(request, metadata=metadata)
            return response

        # Later decisions already at central on a share of the resources (not timed).
        later = [decision(f"central-{n}", f"res-{n}", base + timedelta(minutes=30)) for n in range(seeded)]
        for offset in range(0, len(later), batch):
            await send(later[offset : offset + batch], "bench-online")
        sequence = 0
        replayed = [decision(f"edge-{n}", f"res-{n}", base) for n in range(count)]
        outcomes: dict[str, int] = {}
        started = time.perf_counter()
        for offset in range(0, count, batch):
            response = await send(replayed[offset : offset + batch], AGENT)
            for result in response.results:
                name = sync_pb2.ReplayOutcome.Name(result.outcome)
                outcomes[name] = outcomes.get(name, 0) + 1
        elapsed = time.perf_counter() - started
    return count / elapsed, outcomes


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aeterna-bench-") as scratch:
        server_pg = None
        url = args.database_url
        if url is None:
            server_pg = EmbeddedPostgres(Path(scratch) / "pg").start()
            url = server_pg.url
        try:
            upgrade(url, vector_dimension=8)
            config = AeternaConfig.model_validate(
                {
                    "postgresql": {"url": url},
                    "sync": {"listenPort": 0, "batch": {"maxSize": args.batch}},
                    "vectorDatabase": {"dimension": 8},
                    "aeterna": {"offline": {"conflictResolution": "timestamp"}},
                }
            )
            database = Database(url, max_size=4)
            await database.open()
            deps = await build_deps(config, database)
            server, port = create_server(config, deps)
            await server.start()
            try:
                sessions = make_sessions(args.sessions, args.payload)
                raw = await raw_upsert(psycopg_conninfo(url), sessions, args.batch)
                ingest = await grpc_ingest(f"127.0.0.1:{port}", sessions, args.batch)
                print(
                    f"raw PostgreSQL upsert : {raw:10.0f} sessions/s  ({args.sessions} rows, batches of {args.batch})"
                )
                print(f"central SyncSessions  : {ingest:10.0f} sessions/s  (gRPC, signed, checksummed)")
                print(f"ratio                 : {ingest / raw:10.2f}        (goal >= 0.60)")
                rate, outcomes = await replay(f"127.0.0.1:{port}", args.decisions, args.conflicts, args.decision_batch)
                print(
                    f"replay decisions      : {rate:10.0f} decisions/s ({args.decisions} decisions, "
                    f"{args.conflicts:.0%} conflicts; {outcomes})  (goal >= 5000)"
                )
            finally:
                await server.stop(None)
                await database.close()
        finally:
            if server_pg is not None:
                server_pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20_000, help="sessions to ingest")
    parser.add_argument("--batch", type=int, default=100, help="sessions per batch (sync.batch.maxSize)")
    parser.add_argument("--payload", type=int, default=800, help="bytes of message text per session")
    parser.add_argument("--decisions", type=int, default=10_000, help="decisions to replay")
    parser.add_argument("--conflicts", type=float, default=0.10, help="share of replayed decisions that conflict")
    parser.add_argument("--decision-batch", type=int, default=1000, help="decisions per replay batch")
    parser.add_argument("--database-url", help="an existing PostgreSQL (default: embedded, in a temp dir)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.decisions = 1000, 1000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
