"""Policy propagation across a cluster: one PostgreSQL, three central processes, N watchers.

The ``propagation`` figure times one central process. A real deployment runs
several replicas on one database, and a bundle published at one of them must
reach the ``WatchPolicies`` streams held by all of them: the publishing replica
pushes to its own watchers at once, the others learn of the version from
PostgreSQL ``LISTEN/NOTIFY`` (``central_svc/store/policy_listener.py``), re-read
it and push it to theirs. ``propagation_cluster`` times exactly that:

* three ``aeterna central`` processes on the suite's PostgreSQL (started once
  per suite run and reused by every size and run: starting three replicas costs
  more than a measurement);
* N watchers, each its own edge identity, ``PER_CONNECTION`` (100) streams per
  HTTP/2 connection as in the single-central row; connection ``c`` goes
  **directly** to replica ``c mod 3`` (round-robin by target, no balancer: what
  HAProxy's TCP mode with ``leastconn`` does to long-lived connections, without
  a proxy hop or a proxy's CPU on the same two cores);
* the watchers live in ``watch_processes(N)`` client processes (one per 1,000
  watchers, ``BENCH_WATCH_PROCESSES`` overrides), so that one Python process
  parsing thousands of messages is not what is measured; arrival times are
  ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide, so comparable across
  processes);
* ``PublishPolicies`` through replica ``c1``; the time until every watcher holds
  the new version. p50, p99 (goal <= 250 ms) and max, the p99 of watchers on the
  publishing replica (``local``) and on the others (``remote``, through NOTIFY),
  and the CPU the three centrals spent during the fan-out.

The limit is the same as the single-central row's: a bare unary round trip
(health ``Check``) to one replica, measured in the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from grpc import aio

from aeterna_cli.processes import ServiceFactory, ServiceProcess
from aeterna_client.channel import ClientSettings, open_channel
from bench.central_bench import DIMENSION, migrated
from bench.fleet_bench import OPERATOR, PER_CONNECTION, percentile, policy, process_stats, unary_p50
from bench.suite import Env, Figure, Sample

REPLICAS = ("c1", "c2", "c3")
GOAL_MS = 250.0
WATCHERS_PER_PROCESS = 1000
TIMEOUT = 120.0


@dataclass
class Cluster:
    """The replicas of one suite run, by name."""

    factory: ServiceFactory
    replicas: dict[str, ServiceProcess]

    def close(self) -> None:
        self.factory.close()


_CLUSTERS: dict[int, Cluster] = {}
"""One cluster per suite run (keyed by the Env's id), stopped by the Env's closers."""


def start_cluster(env: Env) -> Cluster:
    """Three central processes on the suite's PostgreSQL, each with its own data dir and port."""
    url = migrated(env)
    factory = ServiceFactory(env.scratch / "cluster")
    replicas = {
        name: factory.make(
            "central",
            name,
            {
                "deploymentMode": "central",
                "central": {"dataDir": str(env.scratch / "cluster" / name / "data")},
                "postgresql": {"url": url},
                "sync": {"listenPort": 0, "rateLimit": "10000000/sec"},
                "telemetry": {"metricsPort": 0, "logLevel": "WARNING"},
                "vectorDatabase": {"dimension": DIMENSION},
            },
        )
        for name in REPLICAS
    }
    cluster = Cluster(factory, replicas)
    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda service: service.start(timeout=90), replicas.values()))
    except Exception:
        factory.close()
        raise
    return cluster


async def cluster_for(env: Env) -> Cluster:
    """The suite run's cluster, started on first use."""
    key = id(env)
    if key not in _CLUSTERS:
        cluster = await asyncio.to_thread(start_cluster, env)
        _CLUSTERS[key] = cluster

        def close() -> None:
            _CLUSTERS.pop(key, None)
            cluster.close()

        env._closers.append(close)  # the Env stops it when the suite run ends
    return _CLUSTERS[key]


def watch_processes(watchers: int) -> int:
    """Client processes for ``watchers`` (BENCH_WATCH_PROCESSES overrides one per 1,000)."""
    override = os.environ.get("BENCH_WATCH_PROCESSES")
    if override:
        return max(1, int(override))
    return max(1, -(-watchers // WATCHERS_PER_PROCESS))


def plan(watchers: int, targets: list[str], processes: int) -> list[list[tuple[str, list[int]]]]:
    """Watcher indexes grouped into connections: connection ``c`` to ``targets[c % 3]``, owned by process
    ``c % processes``. At least one connection per replica, so a tiny run still spans the cluster."""
    per_connection = min(PER_CONNECTION, max(1, -(-watchers // len(targets))))
    connections = [list(range(s, min(s + per_connection, watchers))) for s in range(0, watchers, per_connection)]
    owned: list[list[tuple[str, list[int]]]] = [[] for _ in range(processes)]
    for number, indexes in enumerate(connections):
        owned[number % processes].append((targets[number % len(targets)], indexes))
    return owned


async def _watch_all(pipe: Connection, connections: list[tuple[str, list[int]]], start: int) -> None:
    """One client process: open the streams, report when all hold ``start``, report arrival times of ``start+1``."""
    channels: list[aio.Channel] = []
    arrived: dict[int, float] = {}
    ready = 0
    all_ready = asyncio.Event()
    total = sum(len(indexes) for _, indexes in connections)

    async def watch(channel: aio.Channel, index: int) -> None:
        nonlocal ready
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        metadata = (("x-aeterna-agent-id", f"cwatcher-{index}"), ("x-aeterna-tenant-id", "default"))
        call = stub.WatchPolicies(policy_pb2.WatchPoliciesRequest(known_version=0), metadata=metadata)
        async for message in call:
            if message.bundle.version > start:
                # No cancel here: 3,000 cancellations would load the replicas during the fan-out being
                # timed. The streams end when the channels close, after the arrival times are sent.
                arrived[index] = time.monotonic()
                return
            if message.bundle.version == start:
                ready += 1
                if ready == total:
                    all_ready.set()

    tasks = []
    cpu = 0.0
    for number, (target, indexes) in enumerate(connections):
        channel = open_channel(target, ClientSettings(), options=[("grpc.channel_id", number)])
        channels.append(channel)
        tasks += [asyncio.create_task(watch(channel, index)) for index in indexes]
    try:
        async with asyncio.timeout(TIMEOUT):
            await all_ready.wait()
        pipe.send(("ready", total))
        cpu0 = time.process_time()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*tasks, return_exceptions=True)
        cpu = time.process_time() - cpu0
    except TimeoutError:
        pass  # reported as missing arrivals by the parent
    finally:
        for task in tasks:
            task.cancel()
        pipe.send(("done", (arrived, cpu)))
        for channel in channels:
            await channel.close()


def watcher_process(pipe: Connection, connections: list[tuple[str, list[int]]], start: int) -> None:
    """Entry point of a client process (spawned: gRPC does not survive fork)."""
    try:
        asyncio.run(_watch_all(pipe, connections, start))
    finally:
        pipe.close()


async def measure_cluster_propagation(env: Env, watchers: int) -> list[Sample]:
    cluster = await cluster_for(env)
    services = list(cluster.replicas.values())
    targets = [s.target for s in services]
    base_ms = await unary_p50(targets[0])
    context = multiprocessing.get_context("spawn")
    async with open_channel(targets[0], ClientSettings()) as channel:
        publisher = policy_pb2_grpc.PolicyServiceStub(channel)
        first = await publisher.PublishPolicies(policy("permit(principal, action, resource);"), metadata=OPERATOR)
        start = first.bundle.version
        owned = plan(watchers, targets, watch_processes(watchers))
        pipes: list[Connection] = []
        children = []
        for connections in owned:
            mine, theirs = context.Pipe()
            child = context.Process(target=watcher_process, args=(theirs, connections, start), daemon=True)
            child.start()
            theirs.close()
            pipes.append(mine)
            children.append(child)
        try:
            for pipe in pipes:
                kind, payload = await asyncio.to_thread(pipe.recv)
                if kind != "ready":
                    raise RuntimeError(f"a client process gave up before its watchers were ready ({payload!r})")
            await asyncio.sleep(0.2)
            pids = [s.process.pid for s in services if s.process is not None]
            cpu0 = sum(process_stats(pid)[1] for pid in pids)
            started = time.monotonic()
            await publisher.PublishPolicies(policy("forbid(principal, action, resource);"), metadata=OPERATOR)
            arrived: dict[int, float] = {}
            clients_cpu = 0.0
            for pipe in pipes:
                kind, (times, cpu) = await asyncio.to_thread(pipe.recv)
                arrived.update(times)
                clients_cpu += cpu
            cpu1 = sum(process_stats(pid)[1] for pid in pids)
        finally:
            for child in children:
                await asyncio.to_thread(child.join, 30)
                if child.is_alive():
                    child.kill()
            for pipe in pipes:
                pipe.close()
    if len(arrived) != watchers:
        raise RuntimeError(f"only {len(arrived)} of {watchers} watchers received the new version")
    local = {
        index for connections in owned for target, indexes in connections if target == targets[0] for index in indexes
    }
    delays = [(t - started) * 1000 for t in arrived.values()]
    local_ms = [(t - started) * 1000 for i, t in arrived.items() if i in local]
    remote_ms = [(t - started) * 1000 for i, t in arrived.items() if i not in local]
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    extra = {
        "max_ms": max(delays),
        "local_p99_ms": percentile(local_ms, 0.99),
        "remote_p99_ms": percentile(remote_ms, 0.99) if remote_ms else 0.0,
        "centrals_cpu_ms": (cpu1 - cpu0) * 1000,
        "clients_cpu_ms": clients_cpu * 1000,
        "client_processes": float(len(owned)),
    }
    return [
        Sample("publish->all p50", p50, "ms", "unary RTT p50", base_ms, p50 / base_ms, "", None),
        Sample("publish->all p99", p99, "ms", "unary RTT p50", base_ms, p99 / base_ms, "p99 <= 250 ms",
               p99 <= GOAL_MS, extra={"p99_minus_rtt_ms": p99 - base_ms, **extra}),
    ]  # fmt: skip


FIGURES = [
    Figure(
        "propagation_cluster",
        "policy publish at one of 3 central replicas -> every WatchPolicies client on all 3 (LISTEN/NOTIFY)",
        measure_cluster_propagation,
        {"smoke": (30,), "quick": (300, 1000, 3000), "full": (300, 1000, 3000)},
        lambda n: f"{n} edges / 3 replicas",
        goal_note="CPU-bound on 2 shared cores: each replica's fan-out is serial, p99 is about watchers per replica"
        " x 0.24-0.36 ms per push (grpcio's per-message send path); see docs/performance.md (Policy propagation).",
    ),
]
