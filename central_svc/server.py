"""``create_server(config, deps) -> (server, port)``: central's gRPC server, not yet started."""

from __future__ import annotations

from aeterna.policy.v1 import policy_pb2, policy_pb2_grpc
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio

from aeterna_security.keys import SigningKeyring
from aeterna_security.tls import server_credentials
from aeterna_server.server import ServiceBinding, bind, build_server
from aeterna_shared.config import AeternaConfig
from central_svc.api.policy import PolicyServicer
from central_svc.api.sync import SyncServicer
from central_svc.deps import CentralDeps
from interceptors.chain import server_interceptors

SERVICE_NAMES = (
    sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
)
"""Full names of the services central serves (for health and reflection)."""


def create_server(config: AeternaConfig, deps: CentralDeps, *, port: int | None = None) -> tuple[aio.Server, int]:
    """Build the server with both services and bind it; ``port`` overrides ``sync.listenPort`` (0 picks one).

    The health servicer is left in ``deps.health`` for the wiring to mark SERVING once started.
    """
    bindings = [
        ServiceBinding(
            sync_pb2_grpc.add_SyncServiceServicer_to_server,
            SyncServicer(config, deps, SigningKeyring.from_config(config)),
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
    bound = bind(server, config.central.listen_host, listen_port, server_credentials(config))
    deps.health = health_servicer
    return server, bound
