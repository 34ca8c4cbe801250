"""``create_server(config, deps) -> CentralServer``: central's gRPC server, bound, started by ``start()``."""

from __future__ import annotations

from dataclasses import dataclass

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio
from grpc_health.v1 import health

from aeterna_security.keys import SigningKeyring
from aeterna_security.tls import server_credentials
from aeterna_server.server import ServiceBinding, bind, build_server, mark_not_serving, mark_serving
from aeterna_shared.config import AeternaConfig
from central_svc.api.policy import PolicyServicer
from central_svc.api.sync import SyncServicer
from central_svc.deps import CentralDeps
from central_svc.policies import PolicyHub
from interceptors.chain import server_interceptors

SERVICE_NAMES = (
    sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
)
"""Full names of the services central serves (for health and reflection)."""


@dataclass
class CentralServer:
    """The gRPC server with its health servicer and the port it is bound to."""

    server: aio.Server
    health: health.aio.HealthServicer
    port: int
    hub: PolicyHub
    """The policy hub whose watch streams ``stop`` ends."""

    async def start(self) -> None:
        """Start serving and report SERVING for the whole server and each service."""
        await self.server.start()
        await mark_serving(self.health, SERVICE_NAMES)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, end the watch streams, then stop, letting calls in flight finish within ``grace``.

        Watch streams never end on their own, so without closing the hub first
        a graceful stop would wait its whole grace period.
        """
        await mark_not_serving(self.health)
        self.hub.close()
        await self.server.stop(grace)


def create_server(config: AeternaConfig, deps: CentralDeps, *, port: int | None = None) -> CentralServer:
    """Build the server with both services and bind it; ``port`` overrides ``sync.listenPort`` (0 picks one)."""
    bindings = [
        ServiceBinding(
            sync_pb2_grpc.add_SyncServiceServicer_to_server,
            SyncServicer(config.sync, deps, SigningKeyring.from_config(config.sync.signing)),
            SERVICE_NAMES[0],
        ),
        ServiceBinding(
            policy_pb2_grpc.add_PolicyServiceServicer_to_server, PolicyServicer(deps.policies), SERVICE_NAMES[1]
        ),
    ]
    server, health_servicer = build_server(
        bindings,
        interceptors=server_interceptors(config, role="central"),
        compression=config.sync.network.compression,
        max_message_bytes=config.sync.batch.max_bytes,
    )
    listen_port = config.sync.listen_port if port is None else port
    bound = bind(server, config.central.listen_host, listen_port, server_credentials(config.tls))
    return CentralServer(server, health_servicer, bound, deps.policies.hub)
