"""Assembling the edge's gRPC server: the EdgeService on the shared server stack."""

from __future__ import annotations

from dataclasses import dataclass

from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from grpc import aio
from grpc_health.v1 import health

from aeterna_shared.config import AeternaConfig
from edge_svc.api.edge_service import EdgeService
from edge_svc.node import EdgeNode
from interceptors.chain import server_interceptors
from interceptors.server import ServiceBinding, bind, build_server, mark_not_serving, mark_serving
from interceptors.tls import server_credentials

SERVICE_NAME = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].full_name


@dataclass
class EdgeServer:
    """The gRPC server with its health servicer."""

    server: aio.Server
    health: health.aio.HealthServicer

    async def start(self) -> None:
        """Start serving and report SERVING."""
        await self.server.start()
        await mark_serving(self.health, [SERVICE_NAME])

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then stop, letting calls in flight finish within ``grace``."""
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
    return EdgeServer(server, health_servicer), port
