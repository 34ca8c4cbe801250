"""The interceptor chains both services use, built from configuration in one place.

Order matters: the first listed is outermost.

1. tracing (``telemetry.tracingEnabled``): outermost, so refusals by the
   interceptors below are traced too, and the W3C context is extracted first;
2. metrics (``telemetry.metricsEnabled``): sees every final status code,
   including UNAUTHENTICATED and RESOURCE_EXHAUSTED from the layers below;
3. authentication (``sync.auth.method``, plus ``tls.clientPins``): everything
   after it sees an identity;
4. rate limit per identity: before any work, so a flood is refused cheaply;
   it also counts each message a client streams;
5. concurrent streams per identity;
6. error mapping: innermost, so domain errors raised by servicers (and by
   request iterators, such as a rate limit hit mid-stream) become rich statuses.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from grpc import aio

from aeterna_security.tls import check_client_pin
from aeterna_shared.config import AeternaConfig
from interceptors.auth import Authenticator, AuthInterceptor, IdentityCheck
from interceptors.authenticators import AuthSettings, authenticator_from_config
from interceptors.errors import ErrorMappingInterceptor
from interceptors.ratelimit import Limiter, RateLimitInterceptor, StreamLimitInterceptor, limiter_from_config
from interceptors.telemetry import MetricsInterceptor, RpcMetrics, Telemetry, tracing_server_interceptor

Role = Literal["central", "edge"]


def server_interceptors(
    config: AeternaConfig,
    *,
    role: Role,
    telemetry: Telemetry | None = None,
    authenticator: Authenticator | None = None,
    limiter: Limiter | None = None,
) -> list[aio.ServerInterceptor]:
    """The server-side chain for ``role``.

    ``telemetry`` picks the metrics registry and tracer provider (process
    defaults when None); ``authenticator`` and ``limiter`` override what the
    config selects (tests and embedding).
    """
    telemetry = telemetry or Telemetry()
    chain: list[aio.ServerInterceptor] = []
    metrics: RpcMetrics | None = None
    if config.telemetry.tracing_enabled:
        chain.append(tracing_server_interceptor(telemetry.tracer_provider))
    if config.telemetry.metrics_enabled:
        metrics = RpcMetrics(telemetry.registry, role=role)
        chain.append(MetricsInterceptor(metrics))
    checks: list[IdentityCheck] = []
    if config.tls.client_pins:
        checks.append(partial(check_client_pin, config.tls.client_pins))
    if authenticator is None:
        authenticator = authenticator_from_config(
            AuthSettings(
                auth=config.sync.auth,
                client_cert_required=config.tls.enabled and config.tls.require_client_cert,
                development_keys=config.central.api_keys,
            )
        )
    chain.append(
        AuthInterceptor(
            authenticator,
            checks=checks,
            on_failure=metrics.on_auth_failure if metrics else None,
        )
    )
    on_limited = metrics.on_limited if metrics else None
    chain.append(RateLimitInterceptor(limiter or limiter_from_config(config.sync), on_limited=on_limited))
    chain.append(StreamLimitInterceptor(config.sync.max_streams_per_identity, on_limited=on_limited))
    chain.append(ErrorMappingInterceptor())
    return chain
