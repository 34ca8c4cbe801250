"""The edge's channel to central: compression, TLS and pinning, credentials, deadlines, tracing.

``open_central_channel(config)`` is the edge's only way to reach central. The
channel's client interceptors (first is outermost):

1. tracing: a CLIENT span per call, W3C ``traceparent`` injected (when
   ``telemetry.tracingEnabled``);
2. ``CentralCallInterceptor``: before a call that would make gRPC (re)connect,
   checks central's certificate against ``sync.network.pinnedCertificates``;
   adds the credential metadata; sets a default deadline when the caller set none
   (``sync.centralServer.timeout`` for unary responses, ``streamTimeout`` for
   streamed responses, so a policy watch is not cut every 30 seconds).

Errors raised before the call is sent (pin mismatch, credentials unavailable)
surface as ``grpc.aio.AioRpcError`` carrying the same ``google.rpc.Status``
details a server would send, so callers handle one kind of failure and read the
reason with ``grpc_status.rpc_status.from_call``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from grpc import aio

from aeterna_client.credentials import CredentialSource, credential_source
from aeterna_security.pins import fetch_peer_chain, require_pin
from aeterna_security.tls import channel_credentials, minimum_tls_version
from aeterna_server.server import compression_of
from aeterna_shared.config import AeternaConfig
from aeterna_shared.errors import AeternaError
from interceptors.auth import AGENT_ID_HEADER, TENANT_ID_HEADER
from interceptors.errors import STATUS_DETAILS_KEY, code_for, to_status_proto
from interceptors.telemetry import Telemetry, tracing_client_interceptors

_log = logging.getLogger(__name__)


def central_metadata(config: AeternaConfig) -> tuple[tuple[str, str], ...]:
    """Identity hints for development auth ("none"); central ignores them under any other method.

    The channel adds real credentials itself; this stays for callers that pass
    metadata explicitly.
    """
    return ((AGENT_ID_HEADER, config.edge.agent_id), (TENANT_ID_HEADER, config.edge.tenant_id))


def rpc_error(error: AeternaError) -> aio.AioRpcError:
    """A client-side failure as the ``AioRpcError`` a server would have produced (rich details included)."""
    status = to_status_proto(error)
    trailing = aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString()))
    return aio.AioRpcError(code_for(error), aio.Metadata(), trailing, details=error.message)


class PinVerifier:
    """Checks central's certificate against the configured SPKI pins before gRPC connects."""

    def __init__(self, config: AeternaConfig, host: str, port: int) -> None:
        network = config.sync.network
        self._pins = tuple(network.pinned_certificates)
        self._host = host
        self._port = port
        self._ca_pem = Path(config.tls.ca_file).read_bytes() if config.tls.ca_file else None
        self._ca_certs: Sequence[x509.Certificate] = (
            x509.load_pem_x509_certificates(self._ca_pem) if self._ca_pem else ()
        )
        self._client_cert = config.tls.cert_file
        self._client_key = config.tls.key_file
        self._minimum = minimum_tls_version(config)
        self._lock = asyncio.Lock()
        self.checks = 0
        """How many probes ran (observability and tests)."""

    @classmethod
    def from_config(cls, config: AeternaConfig) -> PinVerifier | None:
        """A verifier when the URL uses TLS and pins are configured, else None."""
        endpoint = config.sync.central_server
        network = config.sync.network
        if not endpoint.uses_tls or not (network.certificate_pinning or network.pinned_certificates):
            return None
        host, _, port = endpoint.target.rpartition(":")
        return cls(config, host.strip("[]"), int(port))

    def check_now(self) -> str:
        """Probe central synchronously; return the matching pin or raise ``PinMismatch``/``Unavailable``."""
        chain = fetch_peer_chain(
            self._host,
            self._port,
            ca_pem=self._ca_pem,
            client_cert_file=self._client_cert,
            client_key_file=self._client_key,
            minimum_version=self._minimum,
        )
        self.checks += 1
        return require_pin(chain, self._pins, target=f"{self._host}:{self._port}", ca_certs=self._ca_certs)

    async def ensure(self, channel: aio.Channel | None) -> None:
        """Probe unless the channel is already connected (a connection made after the last good probe)."""
        if channel is not None and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY:
            return
        async with self._lock:
            if channel is not None and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY:
                return
            await asyncio.to_thread(self.check_now)


class CentralCallInterceptor:
    """Pins, credentials and default deadlines for every call to central.

    grpc.aio files each client interceptor under ONE shape (the first
    interface it implements), so ``for_channel`` returns one small adapter per
    shape, all sharing this object.
    """

    def __init__(
        self,
        credentials: CredentialSource,
        *,
        unary_timeout: float,
        stream_timeout: float,
        pins: PinVerifier | None = None,
    ) -> None:
        self._credentials = credentials
        self._unary_timeout = unary_timeout
        self._stream_timeout = stream_timeout
        self._pins = pins
        self.channel: aio.Channel | None = None
        """Set by ``open_central_channel`` so the pin check can see the connection state."""

    async def prepare(self, details: aio.ClientCallDetails, *, streaming_response: bool) -> aio.ClientCallDetails:
        """The call details with credentials and a deadline, after the pin check."""
        try:
            if self._pins is not None:
                await self._pins.ensure(self.channel)
            extra = await self._credentials.metadata()
        except AeternaError as error:
            raise rpc_error(error) from None
        metadata = aio.Metadata(*tuple(details.metadata or ()))
        present = {key for key, _ in metadata}
        for key, value in extra:
            if key not in present:
                metadata.add(key, value)
        timeout = details.timeout
        if timeout is None:
            timeout = self._stream_timeout if streaming_response else self._unary_timeout
        return aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)

    def for_channel(self) -> list[aio.ClientInterceptor]:
        """One interceptor per RPC shape."""
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, core: CentralCallInterceptor) -> None:
        self._core = core

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._core.prepare(client_call_details, streaming_response=False), request)


class _UnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, core: CentralCallInterceptor) -> None:
        self._core = core

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._core.prepare(client_call_details, streaming_response=True), request)


class _StreamUnary(aio.StreamUnaryClientInterceptor):
    def __init__(self, core: CentralCallInterceptor) -> None:
        self._core = core

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details = await self._core.prepare(client_call_details, streaming_response=False)
        return await continuation(details, request_iterator)


class _StreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, core: CentralCallInterceptor) -> None:
        self._core = core

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details = await self._core.prepare(client_call_details, streaming_response=True)
        return await continuation(details, request_iterator)


def open_central_channel(
    config: AeternaConfig,
    *,
    telemetry: Telemetry | None = None,
    credentials: CredentialSource | None = None,
) -> aio.Channel:
    """A channel to ``sync.centralServer``; TLS (with pinning when configured) when the URL is https://.

    Nothing is sent before the first call; the first call (and any call made
    while the channel is not connected) first checks the pins, so a server whose
    certificate matches no pin never receives a request.
    """
    endpoint = config.sync.central_server
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", config.sync.batch.max_bytes),
        ("grpc.max_send_message_length", config.sync.batch.max_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
        # Each channel owns its connections: a replaced channel (GrpcCentral after health checks
        # time out) must not be handed the same stuck subchannel from gRPC's global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    compression = compression_of(config.sync.network.compression)
    telemetry = telemetry or Telemetry()
    interceptor = CentralCallInterceptor(
        credentials if credentials is not None else credential_source(config),
        unary_timeout=endpoint.timeout.total_seconds(),
        stream_timeout=endpoint.stream_timeout.total_seconds(),
        pins=PinVerifier.from_config(config),
    )
    interceptors: list[aio.ClientInterceptor] = []
    if config.telemetry.tracing_enabled:
        interceptors.extend(tracing_client_interceptors(telemetry.tracer_provider))
    interceptors.extend(interceptor.for_channel())
    if endpoint.uses_tls:
        channel = aio.secure_channel(
            endpoint.target,
            channel_credentials(config),
            options=options,
            compression=compression,
            interceptors=interceptors,
        )
    else:
        if config.sync.network.certificate_pinning:
            _log.warning("sync.network.certificatePinning is on but %s is not https://: no pinning", endpoint.url)
        channel = aio.insecure_channel(
            endpoint.target, options=options, compression=compression, interceptors=interceptors
        )
    interceptor.channel = channel
    return channel
