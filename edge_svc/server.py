"""Assembling the edge's gRPC server: the EdgeService on the shared server stack.

Health (``grpc.health.v1``): the whole server ("") and ``aeterna.edge.v1.EdgeService``
report SERVING while the edge serves — that is liveness and readiness, and an
edge whose sync is stuck still answers agents. Sync progress has its own
service name, ``aeterna.sync``: SERVING normally, NOT_SERVING while a sync
channel is degraded (the link is online but the channel makes no progress; see
``edge_svc.sync``). A probe or an operator asks for it by name; nothing
restarts the edge for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2

from aeterna_security.tls import server_credentials
from aeterna_server.server import ServiceBinding, bind, build_server, mark_not_serving, mark_serving
from aeterna_shared.config import AeternaConfig
from edge_svc.api.edge_service import EdgeService
from edge_svc.node import EdgeNode
from interceptors.chain import server_interceptors

SERVICE_NAME = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].full_name
SYNC_HEALTH_SERVICE = "aeterna.sync"
"""Health service name that is NOT_SERVING while a sync channel is degraded."""

_log = logging.getLogger(__name__)


@dataclass
class EdgeServer:
    """The gRPC server with its health servicer."""

    server: aio.Server
    health: health.aio.HealthServicer
    node: EdgeNode | None = None
    """The node whose sync state ``aeterna.sync`` reports (None: not reported)."""
    _watcher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _sync_degraded: bool | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        """Start serving and report SERVING (and the sync state under ``aeterna.sync``)."""
        await self.server.start()
        await mark_serving(self.health, [SERVICE_NAME])
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
        interval = min(max(self.node.config.central_server.health_check.interval.total_seconds(), 0.1), 5.0)
        while True:
            await asyncio.sleep(interval)
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
    port = bind(server, config.edge.listen_host, config.edge.listen_port, server_credentials(config))
    return EdgeServer(server, health_servicer, deps), port
