"""Client side of the ``capacity`` figure: simulated edges spread over several worker processes.

Why processes: one Python process with one asyncio loop cannot drive 10,000
``SyncSessions`` streams and their protobuf/HMAC work on one core; the figure
would then measure the bench's own event loop, not central. So the streams are
split over ``ceil(edges / STREAMS_PER_PROCESS)`` worker processes (at least
two, so that even the smoke run goes through this path), each with its own
asyncio loop, started with ``spawn`` (gRPC core does not survive ``fork``
after it has started threads).

Why one channel per simulated edge: a real edge holds its own HTTP/2
connection to central, and ``open_channel`` sets
``grpc.use_local_subchannel_pool``, so each channel is its own TCP connection.
Central therefore sees one socket (one file descriptor, one HTTP/2 transport)
per edge, as in production, rather than 100 streams multiplexed on one
connection, which would hide the per-connection cost. Each worker raises its
own ``RLIMIT_NOFILE`` with :func:`raise_open_file_limit` (2,000 sockets is
above the usual soft limit of 1,024).

A worker connects every channel first (``channel_ready``), builds its
sessions, reports ready and waits for the shared start event, so that central's
CPU is measured over the streaming alone; connection time is reported apart.
Each batch gets its header (fresh ``sent_time``) and HMAC signature when it is
due, as an edge does. A stream central ends with an error (RESOURCE_EXHAUSTED
``INGEST_BUSY`` when no write turn came within ``sync.ingestWait``, for
example) is treated as an edge treats it: the unacked batches are kept, and
after a jittered backoff, no shorter than the RetryInfo delay central named
(read by the edge's own ``busy_of``), the stream is reopened and they are sent
again (a batch central had already
committed comes back ``DUPLICATE``, which counts as acked once). The figure
counts those reopenings and their status, so shed load is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, cast

import grpc
from aeterna.memory.v1 import memory_pb2
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio

from aeterna_client.channel import ClientSettings, open_channel
from aeterna_security.keys import DEVELOPMENT_KEY
from aeterna_server.capacity import raise_open_file_limit
from aeterna_shared.wire.canonical import session_checksum, sign_batch
from bench.central_bench import header, make_sessions
from edge_svc.api.central_client import busy_of

ACCEPTED = sync_pb2.AckStatus.ACK_STATUS_ACCEPTED
DUPLICATE = sync_pb2.AckStatus.ACK_STATUS_DUPLICATE
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
"""Codes after which sending the same batch again cannot succeed: the simulated edge gives up."""
STREAMS_PER_PROCESS = 2_000
"""Simulated edges per worker process (each its own channel, hence its own socket)."""
CONNECT_CONCURRENCY = 200
"""Channels a worker connects at once, so that central's listen backlog is not flooded."""


@dataclass(frozen=True)
class Plan:
    """What one worker process runs."""

    target: str
    worker: int
    edges: int
    rounds: int
    interval: float
    per_batch: int
    payload_bytes: int
    deadline: float


@dataclass(frozen=True)
class Outcome:
    """What one worker saw: batches sent and acked, edges that gave up, streams reopened and why, its peak RSS."""

    worker: int
    sent: int
    acked: int
    errors: int
    first_error: str
    reconnects: int
    refusals: dict[str, int]
    connect_seconds: float
    peak_rss_mib: float


def split(edges: int) -> list[int]:
    """Streams per worker: ``ceil(edges / STREAMS_PER_PROCESS)`` workers (at least 2), as even as can be."""
    workers = max(2, -(-edges // STREAMS_PER_PROCESS))
    workers = min(workers, edges)
    base, extra = divmod(edges, workers)
    return [base + (1 if n < extra else 0) for n in range(workers)]


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sessions(agent: str, sequence: int, per_batch: int, payload_bytes: int) -> list[memory_pb2.Session]:
    sessions = make_sessions(per_batch, payload_bytes)
    for session in sessions:
        session.session_id = f"{agent}-{sequence}-{session.session_id}"
        session.checksum = session_checksum(session)
    return sessions


async def _run(plan: Plan, messages: Queue[Any], start: Event) -> Outcome:
    run = uuid.uuid4().hex[:6]
    agents = [f"cap-{run}-{plan.worker}-{n}" for n in range(plan.edges)]
    channels: list[aio.Channel] = [open_channel(plan.target, ClientSettings()) for _ in agents]
    limiter = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(channel: aio.Channel) -> None:
        async with limiter:
            await channel.channel_ready()

    began = time.perf_counter()
    async with asyncio.timeout(plan.deadline):
        await asyncio.gather(*(connect(c) for c in channels))
    connect_seconds = time.perf_counter() - began
    prepared = [
        [_sessions(agent, sequence, plan.per_batch, plan.payload_bytes) for sequence in range(1, plan.rounds + 1)]
        for agent in agents
    ]
    messages.put(("ready", plan.worker))
    await asyncio.to_thread(start.wait)
    sent = acked = reconnects = 0
    refusals: Counter[str] = Counter()

    async def edge(index: int) -> None:
        """One edge: a batch due every interval; a stream that fails is reopened and the unacked batches resent."""
        nonlocal sent, acked, reconnects
        agent = agents[index]
        metadata = (("x-aeterna-agent-id", agent), ("x-aeterna-tenant-id", "default"))
        stub = sync_pb2_grpc.SyncServiceStub(channels[index])
        outbox: list[sync_pb2.SyncSessionsRequest] = []
        done: set[int] = set()
        due = asyncio.Event()

        async def produce() -> None:
            nonlocal sent
            await asyncio.sleep(random.uniform(0, plan.interval))
            for sequence in range(1, plan.rounds + 1):
                request = sync_pb2.SyncSessionsRequest(
                    header=header(sequence, agent), sessions=prepared[index][sequence - 1]
                )
                sign_batch(request, DEVELOPMENT_KEY)
                outbox.append(request)
                sent += 1
                due.set()
                if sequence < plan.rounds:
                    await asyncio.sleep(plan.interval)

        async def requests() -> AsyncIterator[sync_pb2.SyncSessionsRequest]:
            position = 0
            while True:
                while position < len(outbox):
                    request = outbox[position]
                    position += 1
                    if request.header.sequence not in done:
                        if reconnected:  # a resend is re-signed with a fresh sent_time, as the edge does
                            request.header.sent_time.CopyFrom(header(0).sent_time)
                            sign_batch(request, DEVELOPMENT_KEY)
                        yield request
                if len(outbox) == plan.rounds:
                    return
                due.clear()
                await due.wait()

        async def stream_once() -> None:
            """One stream, written and read apart as the edge's ``GrpcCentral._stream`` does: when central ends
            it, the read raises central's status, while a write under it merely fails (ignored)."""
            nonlocal acked
            call = stub.SyncSessions(metadata=metadata)

            async def write_all() -> None:
                async for request in requests():
                    await call.write(request)
                await call.done_writing()

            writer = asyncio.create_task(write_all())
            try:
                while (response := await call.read()) is not aio.EOF:
                    ack = cast("sync_pb2.SyncSessionsResponse", response).ack
                    if ack.failed == 0 and ack.status in (ACCEPTED, DUPLICATE) and ack.sequence not in done:
                        done.add(ack.sequence)
                        acked += 1
            finally:
                writer.cancel()
                with contextlib.suppress(
                    asyncio.CancelledError, asyncio.InvalidStateError, aio.AioRpcError, aio.UsageError
                ):
                    await writer

        producer = asyncio.create_task(produce())
        reconnected = False
        backoff = 1.0
        try:
            while len(done) < plan.rounds:
                try:
                    await stream_once()
                    if len(done) < plan.rounds and len(outbox) == plan.rounds:
                        raise RuntimeError(f"stream ended with {plan.rounds - len(done)} batch(es) unacked")
                except aio.AioRpcError as error:
                    # What a real edge does with a broken stream: keep the batches, back off, resend;
                    # a refusal of the batch itself (see edge_svc/api/central_client.py) ends this edge.
                    refusals[f"{error.code().name}: {(error.details() or '')[:80]}"] += 1
                    if error.code() in REFUSALS:
                        raise
                    reconnects += 1
                    reconnected = True
                    busy = busy_of(error)  # central named a delay: not sooner than that
                    await asyncio.sleep(max(random.uniform(0.5, 1.0) * backoff, busy.retry_after if busy else 0.0))
                    backoff = min(backoff * 2, 16.0)
        finally:
            producer.cancel()

    tasks = [asyncio.create_task(edge(n)) for n in range(plan.edges)]
    finished, unfinished = await asyncio.wait(tasks, timeout=plan.deadline)
    for task in unfinished:  # past the deadline: counted as edges that never got everything acked
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    errors: list[BaseException] = [error for task in finished if (error := task.exception()) is not None] + [
        TimeoutError(f"not all acked within {plan.deadline:.0f} s")
    ] * len(unfinished)
    for channel in channels:
        await channel.close()
    return Outcome(
        worker=plan.worker,
        sent=sent,
        acked=acked,
        errors=len(errors),
        first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:500] if errors else "",
        reconnects=reconnects,
        refusals=dict(refusals),
        connect_seconds=connect_seconds,
        peak_rss_mib=peak_rss_mib(),
    )


def worker_main(plan: Plan, messages: Queue[Any], start: Event) -> None:
    """Entry point of one worker process: raise its fd limit, run its edges, put its Outcome on ``messages``."""
    raise_open_file_limit(expected_streams=plan.edges)
    try:
        outcome = asyncio.run(_run(plan, messages, start))
    except BaseException as error:  # the parent must hear about it rather than wait for its deadline
        messages.put(("failed", plan.worker, f"{type(error).__name__}: {error}"[:500]))
        raise
    messages.put(("done", plan.worker, outcome))


@dataclass
class Fleet:
    """The worker processes of one capacity run, and the start event they wait on."""

    processes: list[multiprocessing.process.BaseProcess]
    messages: Queue[Any]
    start: Event

    @classmethod
    def spawn(cls, plans: list[Plan]) -> Fleet:
        """Start one process per plan (spawn context)."""
        context = multiprocessing.get_context("spawn")
        messages: Queue[Any] = context.Queue()
        start = context.Event()
        processes: list[multiprocessing.process.BaseProcess] = [
            context.Process(target=worker_main, args=(plan, messages, start), name=f"capacity-{plan.worker}")
            for plan in plans
        ]
        for process in processes:
            process.start()
        return cls(processes, messages, start)

    def _next(self, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item: tuple[Any, ...] = self.messages.get(timeout=1.0)
                return item
            except Exception as error:  # queue.Empty: check that the workers are still alive
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"capacity worker {dead[0].name} exited with {dead[0].exitcode}") from error
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no word from the capacity workers within {timeout:.0f} s") from error

    def wait_ready(self, timeout: float) -> None:
        """Block until every worker has connected its channels and built its sessions."""
        ready = 0
        while ready < len(self.processes):
            item = self._next(timeout)
            if item[0] == "failed":
                raise RuntimeError(f"capacity worker {item[1]} failed while connecting: {item[2]}")
            ready += item[0] == "ready"

    def wait_done(self, timeout: float) -> list[Outcome]:
        """Block until every worker has reported its Outcome."""
        outcomes: list[Outcome] = []
        while len(outcomes) < len(self.processes):
            item = self._next(timeout)
            if item[0] == "failed":
                raise RuntimeError(f"capacity worker {item[1]} failed: {item[2]}")
            if item[0] == "done":
                outcomes.append(item[2])
        return outcomes

    def close(self) -> None:
        """Join the workers; terminate any that are still running (by their own pid)."""
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self.messages.close()
