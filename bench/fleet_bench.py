"""Fleet figures against one real central PROCESS: policy propagation and many concurrent edge streams.

* ``propagation``: N lightweight ``WatchPolicies`` clients (each its own edge
  identity, spread over several HTTP/2 connections, all in the bench process)
  hold the current bundle; a ``PublishPolicies`` is timed until every watcher
  has received the new version. p50/p99 (goal p99 <= 1 s), next to a bare
  unary round trip to the same central (grpc health ``Check``) in the same run.
* ``capacity``: N lightweight edges, each with its own channel (its own
  connection) and one ``SyncSessions`` stream, send a signed batch of 10
  sessions every 2 s (start times jittered) for 3 rounds; the edges live in
  several worker processes (bench/capacity_clients.py says why and how).
  Reported: batches sent / acked, the central process's peak RSS (VmHWM, goal
  <= 2 GiB) and its CPU time per 1,000 sessions, and the wall time.

Central runs as its own process (``aeterna central``) on the suite's
PostgreSQL, so its RSS and CPU are its own; the clients share the 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_cli.processes import ServiceFactory, ServiceProcess
from aeterna_client.channel import ClientSettings, open_channel
from bench.capacity_clients import Fleet, Plan, peak_rss_mib, split
from bench.central_bench import DIMENSION, migrated
from bench.suite import Env, Figure, Sample

PER_CONNECTION = 100
OPERATOR = (("x-aeterna-agent-id", "bench-operator"), ("x-aeterna-tenant-id", "default"))


def start_central(env: Env, factory: ServiceFactory, *, max_edges: int = 1000) -> ServiceProcess:
    url = migrated(env)
    service = factory.make(
        "central",
        f"central-{uuid.uuid4().hex[:6]}",
        {
            "deploymentMode": "central",
            "central": {"dataDir": str(env.scratch / "central-data")},
            "postgresql": {"url": url},
            "sync": {"listenPort": 0, "rateLimit": "10000000/sec", "maxEdges": max_edges},
            "telemetry": {"metricsPort": 0, "logLevel": "WARNING"},
            "vectorDatabase": {"dimension": DIMENSION},
        },
    )
    return service.start(timeout=60)


def channels(target: str, clients: int) -> list[aio.Channel]:
    """Enough separate connections that no one carries more than PER_CONNECTION streams."""
    count = max(1, -(-clients // PER_CONNECTION))
    return [open_channel(target, ClientSettings(), options=[("grpc.channel_id", n)]) for n in range(count)]


async def unary_p50(target: str, calls: int = 50) -> float:
    """Milliseconds of a bare unary round trip (health Check) to the same central."""
    async with open_channel(target, ClientSettings()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            latencies.append((time.perf_counter() - t0) * 1000)
    return statistics.median(latencies)


def policy(text: str) -> policy_pb2.PublishPoliciesRequest:
    return policy_pb2.PublishPoliciesRequest(policies=[policy_pb2.CedarPolicy(policy_id="bench", text=text)])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure_propagation(env: Env, watchers: int) -> list[Sample]:
    factory = ServiceFactory(env.scratch / "fleet")
    try:
        service = await asyncio.to_thread(start_central, env, factory)
        target = service.target
        base_ms = await unary_p50(target)
        pool = channels(target, watchers)
        publisher = policy_pb2_grpc.PolicyServiceStub(pool[0])
        first = await publisher.PublishPolicies(policy("permit(principal, action, resource);"), metadata=OPERATOR)
        start_version = first.bundle.version
        arrived: list[float] = [0.0] * watchers
        ready = asyncio.Semaphore(0)
        target_version = start_version + 1

        async def watch(index: int) -> None:
            stub = policy_pb2_grpc.PolicyServiceStub(pool[index % len(pool)])
            metadata = (("x-aeterna-agent-id", f"watcher-{index}"), ("x-aeterna-tenant-id", "default"))
            call = stub.WatchPolicies(policy_pb2.WatchPoliciesRequest(known_version=0), metadata=metadata)
            async for message in call:
                if message.bundle.version >= target_version:
                    # No cancel here: a cancellation per watcher would load central during the timed
                    # fan-out; the streams end when the channels close below.
                    arrived[index] = time.perf_counter()
                    return
                if message.bundle.version >= start_version:
                    ready.release()

        tasks = [asyncio.create_task(watch(n)) for n in range(watchers)]
        async with asyncio.timeout(120):
            for _ in range(watchers):
                await ready.acquire()
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        await publisher.PublishPolicies(policy("forbid(principal, action, resource);"), metadata=OPERATOR)
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks, return_exceptions=True)
        delays = [(t - started) * 1000 for t in arrived if t]
        for channel in pool:
            await channel.close()
    finally:
        await asyncio.to_thread(factory.close)
    if len(delays) != watchers:
        raise RuntimeError(f"only {len(delays)} of {watchers} watchers received the new version")
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    return [
        Sample("publish->all p50", p50, "ms", "unary RTT p50", base_ms, p50 / base_ms, "", None),
        Sample("publish->all p99", p99, "ms", "unary RTT p50", base_ms, p99 / base_ms, "p99 <= 1,000 ms",
               p99 <= 1000, extra={"p99_share_of_goal": p99 / 1000}),
    ]  # fmt: skip


def process_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


async def measure_capacity(env: Env, edges: int) -> list[Sample]:
    """N simulated edges (one channel and one SyncSessions stream each) in worker processes against one central."""
    rounds, interval, per_batch, payload = 3, 2.0, 10, 400
    deadline = 120.0 + edges * 0.06  # generous: a central that falls behind still gets to ack everything
    factory = ServiceFactory(env.scratch / "fleet")
    fleet: Fleet | None = None
    try:
        service = await asyncio.to_thread(start_central, env, factory, max_edges=max(1000, 2 * edges))
        assert service.process is not None
        pid = service.process.pid
        plans = [
            Plan(service.target, n, count, rounds, interval, per_batch, payload, deadline)
            for n, count in enumerate(split(edges))
        ]
        fleet = Fleet.spawn(plans)
        began = time.perf_counter()
        await asyncio.to_thread(fleet.wait_ready, deadline)
        ready_seconds = time.perf_counter() - began
        rss0, cpu0 = process_stats(pid)
        started = time.perf_counter()
        fleet.start.set()
        outcomes = await asyncio.to_thread(fleet.wait_done, deadline + 60)  # workers stop at their deadline
        wall = time.perf_counter() - started
        _, cpu1 = process_stats(pid)
        peak = peak_rss_mib(pid)
    finally:
        if fleet is not None:
            await asyncio.to_thread(fleet.close)
        await asyncio.to_thread(factory.close)
    sent = sum(o.sent for o in outcomes)
    acked = sum(o.acked for o in outcomes)
    errors = sum(o.errors for o in outcomes)
    reconnects = sum(o.reconnects for o in outcomes)
    if errors:
        first = next(o.first_error for o in outcomes if o.first_error)
        print(f"   capacity {edges} edges: {errors} edge(s) gave up; first: {first}", flush=True)
    if reconnects:
        refusals: Counter[str] = Counter()
        for outcome in outcomes:
            refusals.update(outcome.refusals)
        common = "; ".join(f"{count} x {why}" for why, count in refusals.most_common(3))
        print(f"   capacity {edges} edges: {reconnects} stream(s) reopened after: {common}", flush=True)
    sessions = acked * per_batch
    cpu = cpu1 - cpu0
    cpu_per_k = cpu / max(sessions, 1) * 1000
    wall_per_k = wall / max(sessions, 1) * 1000
    limit_mib = 2048.0
    return [
        Sample("batches acked", float(acked), "batches", "batches sent", float(sent), acked / max(sent, 1),
               "all acked", acked == sent == edges * rounds,
               extra={"edges_gave_up": float(errors), "streams_reopened": float(reconnects),
                      "client_processes": float(len(outcomes)),
                      "clients_ready_s": ready_seconds}),
        Sample("central peak RSS (VmHWM)", peak, "MiB", "goal 2 GiB", limit_mib, peak / limit_mib, "<= 2 GiB",
               peak <= limit_mib,
               extra={"rss_before_streams_mib": rss0,
                      "client_peak_rss_mib": max(o.peak_rss_mib for o in outcomes)}),
        Sample("central CPU / 1k sessions", cpu_per_k, "CPU-s", "wall s / 1k sessions", wall_per_k,
               cpu_per_k / wall_per_k if wall_per_k else 0.0, "", None,
               extra={"wall_s": wall, "central_cpu_s": cpu, "sessions_per_s": sessions / wall if wall else 0.0}),
    ]  # fmt: skip


FIGURES = [
    Figure(
        "propagation",
        "policy publish -> every connected WatchPolicies client on the new version (central process)",
        measure_propagation,
        {"smoke": (10, 30, 100), "quick": (10, 100, 1000), "full": (10, 100, 1000)},
        lambda n: f"{n} edges",
        goal_note="see docs/performance.md (propagation).",
    ),
    Figure(
        "capacity",
        "N edges each streaming a 10-session batch every 2 s to one central process (3 rounds)",
        measure_capacity,
        {"smoke": (10, 100), "quick": (100, 1000, 3000), "full": (1000, 3000, 10000)},
        lambda n: f"{n} edges",
        goal_note="see docs/performance.md (capacity).",
        runs_at={10_000: 1},  # about 4 minutes and 5 client processes a run
    ),
]
