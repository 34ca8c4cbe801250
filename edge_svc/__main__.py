"""The one wiring point of the edge process: ``aeterna edge`` (or ``python -m edge_svc``).

Start-up: open the stores (starting an owned Redis when ``cache.url`` is
unset), bind and start the server, run the first health check of central and
start the loops, then write the ready file. SIGTERM (or SIGINT) stops it
gracefully: NOT_SERVING, flush what can be flushed, AnnounceOffline, stop the
server, close the stores and stop the owned Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry

from aeterna_shared.config import AeternaConfig, load_config
from aeterna_shared.logs import configure_logging
from edge_svc.api.central_client import GrpcCentral
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory, WorkingMemory
from edge_svc.metrics import OutboxCollector, SyncMetrics
from edge_svc.node import EdgeNode
from edge_svc.policy import CedarAgent, PolicyWatcher
from edge_svc.records import Channel
from edge_svc.server import create_server
from edge_svc.store.bundle_file import BundleFile
from edge_svc.store.cache import RedisCache
from edge_svc.store.outbox import ChannelLimits, Outbox
from edge_svc.store.redis_server import OwnedRedis
from edge_svc.store.vectors import QdrantEdgeStore
from edge_svc.sync import SyncEngine
from edge_svc.vectors import VectorIndex
from interceptors.server import start_health_server
from interceptors.telemetry import MetricsEndpoint, install_tracer_provider, serve_metrics

_log = logging.getLogger("edge_svc")

SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class Resources:
    """What the edge opened and must close on shutdown."""

    node: EdgeNode
    cache: RedisCache
    store: QdrantEdgeStore
    owned_redis: OwnedRedis | None

    async def close(self) -> None:
        """Close stores and stop the owned Redis, in reverse order of opening."""
        await self.node.central.close()
        self.node.outbox.close()
        with contextlib.suppress(Exception):
            self.store.close()
        await self.cache.close()
        if self.owned_redis is not None:
            self.owned_redis.stop()


def outbox_limits(config: AeternaConfig) -> dict[Channel, ChannelLimits]:
    """Per-channel limits: sync.offline for data, aeterna.offline.maxQueueSize for decisions."""
    ttl = config.sync.offline.queue_ttl.total_seconds()
    size = config.sync.offline.max_queue_size
    limits = {channel: ChannelLimits(size, ttl) for channel in Channel}
    limits[Channel.DECISIONS] = ChannelLimits(config.aeterna.offline.max_queue_size, ttl)
    return limits


def _open_local(config: AeternaConfig) -> tuple[OwnedRedis | None, str, Outbox, QdrantEdgeStore]:
    """The blocking part of start-up: the owned Redis, the outbox and the vector shard."""
    data_dir = Path(config.edge.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    owned = None
    url = config.cache.url
    if url is None:
        owned = OwnedRedis.start(config, data_dir / "redis")
        url = owned.url
    outbox = Outbox(data_dir / "outbox.sqlite3", outbox_limits(config))
    store = QdrantEdgeStore(data_dir / "vectors", config.vector_database.dimension)
    return owned, url, outbox, store


async def open_edge(config: AeternaConfig, registry: CollectorRegistry | None = None) -> Resources:
    """Open every store and build the node (no loop started yet).

    With a ``registry`` the node reports its sync outcomes and outbox state
    there (the process registry in production; none in in-process tests, which
    may build several nodes in one process).
    """
    owned, url, outbox, store = await asyncio.to_thread(_open_local, config)
    data_dir = Path(config.edge.data_dir)
    cache = RedisCache(url)
    await cache.ping()
    central = GrpcCentral(config)
    link = LinkMonitor(config, central.check_health, enabled=config.sync.enabled)
    sessions = SessionMemory(cache, config.cache.layers.session.ttl)
    sync = SyncEngine(config, outbox, central, link, sessions, metrics=SyncMetrics(registry) if registry else None)
    sessions.on_dirty = sync.session_written
    working = WorkingMemory(cache, config.cache.layers.working.ttl)
    vectors = VectorIndex(config, store, central, link, sync)
    agent = CedarAgent(BundleFile(data_dir / "policy" / "bundle.json"), sync, link)
    retry_base = max(min(config.central_server.health_check.interval.total_seconds(), 1.0), 0.05)
    watcher = PolicyWatcher(agent, central, link, retry_base)
    node = EdgeNode(config, working, sessions, vectors, agent, watcher, sync, link, outbox, central)
    if registry is not None:
        registry.register(OutboxCollector(outbox, lambda: link.online, lambda: agent.version))
    return Resources(node, cache, store, owned)


def write_ready_file(path: Path, port: int, metrics_port: int) -> None:
    """Write the ready file atomically (tmp + rename) so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "metrics_port": metrics_port}))
    tmp.replace(path)


async def run(config: AeternaConfig, ready_file: Path | None) -> int:
    """Run the edge until SIGTERM or SIGINT."""
    registry = prometheus_client.REGISTRY
    resources = await open_edge(config, registry)
    node = resources.node
    edge_server, port = create_server(config, node)
    endpoint: MetricsEndpoint | None = None
    metrics_port = 0
    if config.telemetry.metrics_enabled:
        endpoint = serve_metrics(config, registry=registry)
        metrics_port = endpoint.port
    health_server = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await edge_server.start()
        if config.telemetry.health_port is not None:
            health_server, health_port = await start_health_server(
                edge_server.health, config.edge.listen_host, config.telemetry.health_port
            )
            _log.info("plaintext health endpoint for probes on port %d", health_port)
        await node.start()
        _log.info(
            "edge %s (region %s) serving on %s:%d, central %s",
            config.edge.agent_id,
            config.edge.region,
            config.edge.listen_host,
            port,
            "online" if node.link.online else "offline",
        )
        if ready_file is not None:
            await asyncio.to_thread(write_ready_file, ready_file, port, metrics_port)
        await stop.wait()
        _log.info("stopping edge")
    finally:
        await edge_server.stop(SHUTDOWN_GRACE_SECONDS)
        if health_server is not None:
            await health_server.stop(0)
        await node.shutdown(SHUTDOWN_GRACE_SECONDS)
        await resources.close()
        if endpoint is not None:
            endpoint.close()
    return 0


def main(config_path: str | None, ready_file: str | None) -> int:
    """Load the configuration and run the edge."""
    config = load_config(config_path)
    configure_logging(config, "edge")
    install_tracer_provider(config, "edge")
    return asyncio.run(run(config, Path(ready_file) if ready_file else None))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edge_svc", description="Run an Aeterna edge node.")
    parser.add_argument("--config")
    parser.add_argument("--ready-file")
    arguments = parser.parse_args()
    sys.exit(main(arguments.config, arguments.ready_file))
