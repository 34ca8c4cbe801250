"""``create_server(config, deps) -> CentralServer``: central's gRPC server, bound, started by ``start()``.

Health: readiness (the whole server "" and each service) is SERVING only
while central's PostgreSQL answers a ``SELECT 1`` through the pool
(``aeterna_server.readiness``), so a balancer in front of several replicas
skips one that lost its database. Edges check "" too (``edge_svc.link``):
while central's database is down the edges see central as not ready, go
OFFLINE and queue, which is what they should do, since central could not
store a batch anyway. Liveness (``aeterna.liveness``) stays SERVING while the
process runs.

Connections are given a maximum age (``central.maxConnectionAge``, GOAWAY,
then ``central.maxConnectionAgeGrace`` for calls still open), so that the
long-lived streams of edges spread over replicas added later; edges reconnect
for their next call and resume their watch and sync streams.
"""

from __future__ import annotations

from dataclasses import dataclass

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio
from grpc_health.v1 import health

from aeterna_security.keys import SigningKeyring
from aeterna_security.tls import server_credentials
from aeterna_server.readiness import ReadinessWatch
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
    readiness: ReadinessWatch | None = None
    """Keeps readiness in step with the database (None: always ready while serving)."""

    async def start(self) -> None:
        """Start serving, report SERVING, then keep readiness in step with the database."""
        await self.server.start()
        await mark_serving(self.health, SERVICE_NAMES)
        if self.readiness is not None:
            self.readiness.start()

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, end the watch streams, then stop, letting calls in flight finish within ``grace``.

        Watch streams never end on their own, so without closing the hub first
        a graceful stop would wait its whole grace period.
        """
        if self.readiness is not None:
            await self.readiness.stop()
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
        max_connection_age_ms=int(config.central.max_connection_age.total_seconds() * 1000),
        max_connection_age_grace_ms=int(config.central.max_connection_age_grace.total_seconds() * 1000),
    )
    readiness = ReadinessWatch(health_servicer, SERVICE_NAMES, deps.database.ping, dependency="PostgreSQL")
    listen_port = config.sync.listen_port if port is None else port
    bound = bind(server, config.central.listen_host, listen_port, server_credentials(config.tls))
    return CentralServer(server, health_servicer, bound, deps.policies.hub, readiness)
