"""The one client channel: TLS, SPKI pins, credentials, compression, retries, deadlines and tracing.

``open_channel(target, settings)`` is how every client reaches an Aeterna
service: the edge (to central, with ``central_settings(config)``), the
``aeterna`` CLI, the benchmarks and the tests. ``ClientSettings`` says how to
connect; ``ClientSettings.from_config`` derives it from the sections of the
config the edge uses for central. Plaintext with development headers happens
only when the settings say so (``tls=False`` with auth method ``none``), as in
local development.

The channel's client interceptors (first is outermost):

1. tracing: a CLIENT span per call, W3C ``traceparent`` injected (when
   ``settings.tracing``);
2. ``CallInterceptor``: before a call that would make gRPC (re)connect,
   checks the server's certificate against the SPKI pins; adds the credential
   metadata; sets a default deadline when the caller set none
   (``unary_timeout`` for unary responses, ``stream_timeout`` for streamed
   responses, so a policy watch is not cut every 30 seconds) unless the
   service config gives the method a timeout.

The channel loads the published service config
(``aeterna_client/service_config.json``, see ``aeterna_client.service_config``;
``ClientSettings.service_config``): gRPC retries the idempotent methods on
UNAVAILABLE (at most 4 attempts, throttled per channel so a dead server is not
stormed) and caps some methods with a timeout. Retries happen inside gRPC, below
the interceptors: the tracing span and the credentials cover all attempts of a
call, and the server sees ``grpc-previous-rpc-attempts`` on a retry. A pinned
channel takes the config's timeouts but not its retry policies: a retry may go
out on a connection gRPC made after the failed attempt, which no pin probe
preceded, and a server whose certificate matches no pin must never receive a
request (gRPC's transparent retries of calls that never left the client stay,
as on every channel).

The deadline of a call, in order:

1. the caller's own ``timeout``, if it passed one; gRPC cuts it to the
   method's service-config timeout when that is shorter;
2. else the method's service-config timeout, if it has one (the interceptor
   then sets none of its own, so the config's timeout is the effective one);
3. else ``unary_timeout`` / ``stream_timeout``.

The config gives no timeout to streams, ``FlushSync`` and the methods the edge
calls on central, so the edge's ``sync.centralServer.timeout`` and
``healthCheck.timeout`` remain the deadlines of its calls. Without the service
config (``service_config=False``), rule 2 disappears.

Errors raised before the call is sent (pin mismatch, credentials unavailable)
surface as ``grpc.aio.AioRpcError`` carrying the same ``google.rpc.Status``
details a server would send, so callers handle one kind of failure and read the
reason with ``grpc_status.rpc_status.from_call``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from grpc import aio

from aeterna_client.credentials import CredentialSource, credential_source
from aeterna_client.service_config import method_timeouts, service_config_json
from aeterna_security.pins import fetch_peer_chain, require_pin
from aeterna_security.tls import channel_credentials, minimum_tls_version
from aeterna_server.server import compression_of
from aeterna_shared.config import AeternaConfig
from aeterna_shared.config.model import AuthConfig, EdgeSection, SyncConfig, TelemetrySection, TlsSection
from aeterna_shared.errors import AeternaError
from interceptors.auth import AGENT_ID_HEADER, TENANT_ID_HEADER
from interceptors.errors import STATUS_DETAILS_KEY, code_for, to_status_proto
from interceptors.telemetry import Telemetry, tracing_client_interceptors

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSettings:
    """How a client connects to an Aeterna service.

    The defaults are a local development client: plaintext, development
    identity headers, no compression, 30 s / 1 h default deadlines.
    """

    tls: bool = False
    """Connect with TLS (an https:// or grpcs:// URL)."""
    ca_file: str | None = None
    """PEM roots that verify the server; None: the system roots."""
    cert_file: str | None = None
    """PEM client certificate chain (mTLS), with ``key_file``."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    minimum_tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    """The oldest TLS version the pin probe accepts (gRPC itself negotiates 1.2 or 1.3)."""
    server_name: str | None = None
    """Name the server's certificate is checked against instead of the target's host."""
    certificate_pinning: bool = False
    """Check the server's certificate against ``pins`` before connecting (also on when pins are given)."""
    pins: tuple[str, ...] = ()
    """Accepted SPKI pins, ``sha256/<base64>``."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """Which credential the client presents (method ``none``: development identity headers)."""
    agent_id: str = "operator"
    """Identity named in the development headers."""
    tenant_id: str = "default"
    """Tenant named in the development headers."""
    compression: Literal["gzip", "none"] = "none"
    """Compression of the calls."""
    unary_timeout: float = 30.0
    """Default deadline (seconds) of a call with a unary response."""
    stream_timeout: float = 3600.0
    """Default deadline (seconds) of a call with a streamed response."""
    max_message_bytes: int | None = None
    """Send and receive limit; None: gRPC's defaults."""
    tracing: bool = False
    """A CLIENT span per call, ``traceparent`` injected."""
    service_config: bool = True
    """Load the published service config (retries of idempotent methods, per-method timeouts)."""

    @classmethod
    def from_config(
        cls, sync: SyncConfig, tls: TlsSection, edge: EdgeSection, telemetry: TelemetrySection
    ) -> ClientSettings:
        """The edge's settings for central, from ``sync`` (endpoint, auth, network, batch), ``tls``, ``edge``
        (development identity) and ``telemetry`` (tracing)."""
        endpoint = sync.central_server
        network = sync.network
        return cls(
            tls=endpoint.uses_tls,
            ca_file=tls.ca_file,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            minimum_tls_version=minimum_tls_version(network.encryption),
            certificate_pinning=network.certificate_pinning,
            pins=tuple(network.pinned_certificates),
            auth=sync.auth,
            agent_id=edge.agent_id,
            tenant_id=edge.tenant_id,
            compression=network.compression,
            unary_timeout=endpoint.timeout.total_seconds(),
            stream_timeout=endpoint.stream_timeout.total_seconds(),
            max_message_bytes=sync.batch.max_bytes,
            tracing=telemetry.tracing_enabled,
        )

    @property
    def pinned(self) -> bool:
        """Whether calls are preceded by a pin check (TLS with pinning on or pins given)."""
        return self.tls and (self.certificate_pinning or bool(self.pins))

    def credential_source(self) -> CredentialSource:
        """What ``auth.method`` makes this client present."""
        return credential_source(self.auth, self.agent_id, self.tenant_id)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC's TLS credentials: roots from ``ca_file``, the client certificate when configured."""
        return channel_credentials(self.ca_file, self.cert_file, self.key_file)


def central_settings(config: AeternaConfig) -> ClientSettings:
    """The edge's settings for its channel to central."""
    return ClientSettings.from_config(config.sync, config.tls, config.edge, config.telemetry)


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
    """Checks the server's certificate against the configured SPKI pins before gRPC connects."""

    def __init__(self, settings: ClientSettings, host: str, port: int) -> None:
        self._pins = settings.pins
        self._host = host
        self._port = port
        self._server_name = settings.server_name
        self._ca_pem = Path(settings.ca_file).read_bytes() if settings.ca_file else None
        self._ca_certs: Sequence[x509.Certificate] = (
            x509.load_pem_x509_certificates(self._ca_pem) if self._ca_pem else ()
        )
        self._client_cert = settings.cert_file
        self._client_key = settings.key_file
        self._minimum = settings.minimum_tls_version
        self._lock = asyncio.Lock()
        self.checks = 0
        """How many probes ran (observability and tests)."""

    @classmethod
    def for_target(cls, target: str, settings: ClientSettings) -> PinVerifier | None:
        """A verifier when the settings use TLS and pins are configured, else None."""
        if not settings.pinned:
            return None
        host, _, port = target.rpartition(":")
        return cls(settings, host.strip("[]"), int(port))

    def check_now(self) -> str:
        """Probe the server synchronously; return the matching pin or raise ``PinMismatch``/``Unavailable``."""
        chain = fetch_peer_chain(
            self._host,
            self._port,
            ca_pem=self._ca_pem,
            server_name=self._server_name,
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


class CallInterceptor:
    """Pins, credentials and default deadlines for every call on a channel.

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
        configured_timeouts: Collection[str] = (),
    ) -> None:
        """``configured_timeouts``: the methods (``/package.Service/Method``, or ``/package.Service/``
        for a whole service) whose timeout the channel's service config sets; they get no default here."""
        self._credentials = credentials
        self._unary_timeout = unary_timeout
        self._stream_timeout = stream_timeout
        self._configured = frozenset(configured_timeouts)
        self._pins = pins
        self.channel: aio.Channel | None = None
        """Set by ``open_channel`` so the pin check can see the connection state."""

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
        if timeout is None and not self._configured_timeout(details.method):
            timeout = self._stream_timeout if streaming_response else self._unary_timeout
        return aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)

    def _configured_timeout(self, method: str | bytes) -> bool:
        """Whether the service config gives ``method`` a timeout (rule 2 of the module docstring)."""
        if not self._configured:
            return False
        path = method.decode() if isinstance(method, bytes) else method
        return path in self._configured or path[: path.rfind("/") + 1] in self._configured

    def for_channel(self) -> list[aio.ClientInterceptor]:
        """One interceptor per RPC shape."""
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, core: CallInterceptor) -> None:
        self._core = core

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._core.prepare(client_call_details, streaming_response=False), request)


class _UnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, core: CallInterceptor) -> None:
        self._core = core

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._core.prepare(client_call_details, streaming_response=True), request)


class _StreamUnary(aio.StreamUnaryClientInterceptor):
    def __init__(self, core: CallInterceptor) -> None:
        self._core = core

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details = await self._core.prepare(client_call_details, streaming_response=False)
        return await continuation(details, request_iterator)


class _StreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, core: CallInterceptor) -> None:
        self._core = core

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        details = await self._core.prepare(client_call_details, streaming_response=True)
        return await continuation(details, request_iterator)


def open_channel(
    target: str,
    settings: ClientSettings,
    *,
    telemetry: Telemetry | None = None,
    credentials: CredentialSource | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    """A channel to ``target`` (host:port) as ``settings`` say: TLS (pinned when configured) or plaintext.

    Nothing is sent before the first call; with pins, the first call (and any
    call made while the channel is not connected) first checks them, so a server
    whose certificate matches no pin never receives a request. ``credentials``
    replaces the settings' credential source; ``options`` adds channel options
    (a ``grpc.service_config`` among them replaces the published one).
    """
    channel_options: list[tuple[str, Any]] = []
    if settings.max_message_bytes is not None:
        channel_options += [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
    channel_options += [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
        # Each channel owns its connections: a replaced channel (GrpcCentral after health checks
        # time out) must not be handed the same stuck subchannel from gRPC's global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if settings.tls and settings.server_name:
        channel_options.append(("grpc.ssl_target_name_override", settings.server_name))
    service_config = next((str(value) for key, value in options if key == "grpc.service_config"), None)
    if service_config is None and settings.service_config:
        service_config = service_config_json(retries=not settings.pinned)
        channel_options.append(("grpc.service_config", service_config))
    channel_options += options
    compression = compression_of(settings.compression)
    telemetry = telemetry or Telemetry()
    interceptor = CallInterceptor(
        credentials if credentials is not None else settings.credential_source(),
        unary_timeout=settings.unary_timeout,
        stream_timeout=settings.stream_timeout,
        pins=PinVerifier.for_target(target, settings),
        configured_timeouts=method_timeouts(service_config) if service_config is not None else (),
    )
    interceptors: list[aio.ClientInterceptor] = []
    if settings.tracing:
        interceptors.extend(tracing_client_interceptors(telemetry.tracer_provider))
    interceptors.extend(interceptor.for_channel())
    if settings.tls:
        channel = aio.secure_channel(
            target,
            settings.channel_credentials(),
            options=channel_options,
            compression=compression,
            interceptors=interceptors,
        )
    else:
        if settings.certificate_pinning:
            _log.warning("certificate pinning is on but %s is plaintext: no pinning", target)
        channel = aio.insecure_channel(
            target, options=channel_options, compression=compression, interceptors=interceptors
        )
    interceptor.channel = channel
    return channel


def open_central_channel(
    config: AeternaConfig,
    *,
    telemetry: Telemetry | None = None,
    credentials: CredentialSource | None = None,
) -> aio.Channel:
    """The edge's channel to ``sync.centralServer``: ``open_channel`` with ``central_settings(config)``."""
    return open_channel(
        config.sync.central_server.target, central_settings(config), telemetry=telemetry, credentials=credentials
    )
