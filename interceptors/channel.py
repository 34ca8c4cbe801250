"""The edge's channel to central: compression, TLS, credentials, deadlines."""

from __future__ import annotations

from grpc import aio

from aeterna_shared.config import AeternaConfig
from interceptors.auth import AGENT_ID_HEADER, TENANT_ID_HEADER
from interceptors.server import compression_of


def central_metadata(config: AeternaConfig) -> tuple[tuple[str, str], ...]:
    """Metadata sent on every call to central (identity hints for development auth)."""
    return ((AGENT_ID_HEADER, config.edge.agent_id), (TENANT_ID_HEADER, config.edge.tenant_id))


def open_central_channel(config: AeternaConfig) -> aio.Channel:
    """A channel to ``sync.centralServer``; plaintext unless the URL is https://."""
    endpoint = config.sync.central_server
    options = [
        ("grpc.max_receive_message_length", config.sync.batch.max_bytes),
        ("grpc.max_send_message_length", config.sync.batch.max_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
    ]
    compression = compression_of(config.sync.network.compression)
    if endpoint.uses_tls:
        raise NotImplementedError("TLS to central is configured by interceptors.tls (pending)")
    return aio.insecure_channel(endpoint.target, options=options, compression=compression)
