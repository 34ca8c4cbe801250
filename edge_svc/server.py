"""The edge's gRPC server (the EdgeService on the shared server stack), and the edge process serving it.

``main`` (``aeterna edge``, ``python -m edge_svc``) loads the configuration and
runs the edge: ``deps.open_edge`` opens the stores and builds the node, then
the server is bound and started, the first health check of central runs and
the loops start, and the ready file is written. SIGTERM (or SIGINT) stops it
gracefully: NOT_SERVING, flush what can be flushed, AnnounceOffline, stop the
server, close the stores and stop the owned servers (``EdgeDeps.close``).

Health (``grpc.health.v1``), three meanings by service name:

* readiness: the whole server ("") and ``aeterna.edge.v1.EdgeService`` report
  SERVING while the edge's session store answers a PING
  (``aeterna_server.readiness``, every few seconds), NOT_SERVING while it
  does not (no session can be read or written then) and from the start of a
  graceful shutdown. An edge whose link to central is down or whose sync is
  stuck is still ready: it answers agents from its cache and queues;
* liveness: ``aeterna.liveness``, SERVING for as long as the process runs,
  whether Redis answers or not (a restart would not bring Redis back);
* sync progress: ``aeterna.sync``, SERVING normally, NOT_SERVING while a sync
  channel is degraded (the link is online but the channel makes no progress;
  see ``edge_svc.sync``). A probe or an operator asks for it by name; nothing
  restarts the edge for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import prometheus_client
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry

from aeterna_security.production import EXIT_REFUSED, refusal, role_refusal
from aeterna_security.tls import server_credentials
from aeterna_server.capacity import raise_open_file_limit
from aeterna_server.readiness import ReadinessWatch
from aeterna_server.server import (
    ServiceBinding,
    bind,
    build_server,
    mark_not_serving,
    mark_serving,
    start_health_server,
)
from aeterna_shared.config import AeternaConfig, load_config
from aeterna_shared.errors import AeternaError
from aeterna_shared.logs import configure_logging
from edge_svc.api.edge_service import EdgeService
from edge_svc.deps import EdgeDeps, open_edge
from edge_svc.node import EdgeNode
from interceptors.chain import server_interceptors
from interceptors.telemetry import MetricsEndpoint, install_tracer_provider, serve_metrics, shutdown_tracer_provider

SERVICE_NAME = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].full_name
SYNC_HEALTH_SERVICE = "aeterna.sync"
"""Health service name that is NOT_SERVING while a sync channel is degraded."""

SHUTDOWN_GRACE_SECONDS = 10.0

_log = logging.getLogger(__name__)
_process_log = logging.getLogger("edge_svc")
"""The edge process's own lines (start, stop, refused start), under the package's name as always."""


@dataclass
class EdgeServer:
    """The gRPC server with its health servicer."""

    server: aio.Server
    health: health.aio.HealthServicer
    node: EdgeNode | None = None
    """The node whose sync state ``aeterna.sync`` reports (None: not reported)."""
    sync_poll_seconds: float = 5.0
    """How often the sync state is looked at: ``centralServer.healthCheck.interval``, within [0.1, 5] s."""
    readiness: ReadinessWatch | None = None
    """Keeps readiness in step with the session store (None: always ready while serving)."""
    _watcher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _sync_degraded: bool | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        """Start serving, report SERVING (readiness then follows the session store), and the sync state."""
        await self.server.start()
        await mark_serving(self.health, [SERVICE_NAME])
        if self.readiness is not None:
            self.readiness.start()
        if self.node is not None:
            await self.report_sync()
            self._watcher = asyncio.get_running_loop().create_task(self._watch_sync(), name="sync-health")

    async def report_sync(self) -> bool:
        """Set ``aeterna.sync`` from the sync engine's state now; returns whether sync is degraded."""
        assert self.node is not None
        degraded = self.node.sync.degraded()
        if bool(degraded) != self._sync_degraded:
            self._sync_degraded = bool(degraded)
            status = health_pb2.HealthCheckResponse.NOT_SERVING if degraded else health_pb2.HealthCheckResponse.SERVING
            await self.health.set(SYNC_HEALTH_SERVICE, status)
            if degraded:
                _log.warning(
                    "sync degraded: %s", "; ".join(f"{channel.value}: {why}" for channel, why in degraded.items())
                )
            else:
                _log.info("sync makes progress again")
        return bool(degraded)

    async def _watch_sync(self) -> None:
        assert self.node is not None
        while True:
            await asyncio.sleep(self.sync_poll_seconds)
            try:
                await self.report_sync()
            except Exception:
                _log.exception("could not report the sync state to the health service")

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then stop, letting calls in flight finish within ``grace``."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.readiness is not None:
            await self.readiness.stop()
        await mark_not_serving(self.health)
        await self.server.stop(grace)


def create_server(config: AeternaConfig, deps: EdgeNode) -> tuple[EdgeServer, int]:
    """Build and bind (not start) the edge server; returns it and the bound port."""
    binding = ServiceBinding(edge_pb2_grpc.add_EdgeServiceServicer_to_server, EdgeService(deps), SERVICE_NAME)
    server, health_servicer = build_server(
        [binding],
        interceptors=server_interceptors(config, role="edge"),
        compression=config.sync.network.compression,
        max_message_bytes=config.sync.batch.max_bytes,
    )
    port = bind(server, config.edge.listen_host, config.edge.listen_port, server_credentials(config.tls))
    poll = min(max(config.central_server.health_check.interval.total_seconds(), 0.1), 5.0)
    readiness = ReadinessWatch(health_servicer, [SERVICE_NAME], deps.sessions.cache.ping, dependency="session store")
    return EdgeServer(server, health_servicer, deps, poll, readiness), port


def write_ready_file(path: Path, port: int, metrics_port: int) -> None:
    """Write the ready file atomically (tmp + rename) so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "metrics_port": metrics_port}))
    tmp.replace(path)


async def run(config: AeternaConfig, ready_file: Path | None) -> int:
    """Run the edge until SIGTERM or SIGINT; what start-up opened is closed however this ends."""
    registry = prometheus_client.REGISTRY
    deps = await open_edge(config, registry)
    try:
        return await _serve(deps, registry, ready_file)
    finally:
        await deps.close()


async def _serve(deps: EdgeDeps, registry: CollectorRegistry, ready_file: Path | None) -> int:
    config, node = deps.config, deps.node
    edge_server, port = create_server(config, node)  # binds: an occupied port fails here
    endpoint: MetricsEndpoint | None = None
    health_server = None
    try:
        metrics_port = 0
        if config.telemetry.metrics_enabled:
            endpoint = serve_metrics(config.telemetry, registry=registry)
            metrics_port = endpoint.port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await edge_server.start()
        if config.telemetry.health_port is not None:
            health_server, health_port = await start_health_server(
                edge_server.health, config.edge.listen_host, config.telemetry.health_port
            )
            _process_log.info("plaintext health endpoint for probes on port %d", health_port)
        await node.start()
        _process_log.info(
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
        _process_log.info("stopping edge")
    finally:
        await edge_server.stop(SHUTDOWN_GRACE_SECONDS)
        if health_server is not None:
            await health_server.stop(0)
        await node.shutdown(SHUTDOWN_GRACE_SECONDS)
        if endpoint is not None:
            endpoint.close()
    return 0


def main(config_path: str | None, ready_file: str | None, *, development: bool = False) -> int:
    """Load the configuration and run the edge; a refused start (data directory in use,
    unsafe cache, ...) is one clear ERROR line and exit status 1.

    Development-only settings outside development mode (``development`` is the
    ``--development`` flag) are refused before anything starts: one paragraph
    on stderr and exit status 2 (``aeterna_security.production``).
    """
    config = load_config(config_path)
    if development:
        config = config.model_copy(update={"development": True})
    refused = role_refusal(config, "edge", config_path) or refusal(config, "edge")
    if refused is not None:
        print(refused, file=sys.stderr)
        return EXIT_REFUSED
    configure_logging(config, "edge")
    raise_open_file_limit(expected_streams=1_000)  # agents' connections, the cache, the outbox, central
    tracer_provider = install_tracer_provider(config.telemetry, "edge")
    try:
        return asyncio.run(run(config, Path(ready_file) if ready_file else None))
    except AeternaError as error:
        _process_log.error("edge stopped: %s [%s]", error.message, error.reason)
        return 1
    finally:
        shutdown_tracer_provider(tracer_provider)  # the spans of the last flush leave before the process does
