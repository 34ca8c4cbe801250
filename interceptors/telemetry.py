"""Traces and metrics for RPCs.

Traces use OpenTelemetry's gRPC instrumentation (its aio server interceptor
and aio client interceptors), which carry W3C trace context (``traceparent``)
in metadata, so a span started at the edge is the parent of central's server
span. Health checks and reflection are excluded from traces and metrics.

Metrics are Prometheus collectors on a ``CollectorRegistry`` passed in (the
process default when none is given), served on ``/metrics`` by
``start_metrics_server``:

* ``aeterna_rpc_requests_total{role,method,code}``
* ``aeterna_rpc_duration_seconds{role,method}`` (for streams: the stream's lifetime)
* ``aeterna_rpc_rate_limited_total{role,method,reason}`` (rate limit and stream limit refusals)
* ``aeterna_rpc_auth_failures_total{role,method,reason}``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from threading import Thread
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
import prometheus_client
from grpc import aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from prometheus_client import CollectorRegistry, Counter, Histogram

from aeterna_shared.config.model import TelemetrySection
from aeterna_shared.errors import AeternaError
from interceptors.errors import code_for
from interceptors.handlers import HookedInterceptor, PassThrough, UnaryCall

_C = TypeVar("_C", Counter, Histogram)


def _get_or_create(registry: CollectorRegistry, name: str, factory: type[_C], *args: Any, **kwargs: Any) -> _C:
    # Several servers in one process (central and edge in hybrid mode, or tests)
    # share the process registry: reuse a collector another instance registered.
    existing = registry._names_to_collectors.get(name)
    if existing is None and factory is Counter:
        existing = registry._names_to_collectors.get(name + "_total")
    if isinstance(existing, factory):
        return existing
    # prometheus_client types each metric class with its own signature; called through the union.
    created: _C = factory(name, *args, registry=registry, **kwargs)  # type: ignore[misc]
    return created


class RpcMetrics:
    """The RPC collectors of one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, role: str = "central") -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.role = role
        self.handled = _get_or_create(
            self.registry,
            "aeterna_rpc_requests",
            Counter,
            "RPCs completed, by method and status code.",
            ["role", "method", "code"],
        )
        self.latency = _get_or_create(
            self.registry,
            "aeterna_rpc_duration_seconds",
            Histogram,
            "Time to serve an RPC (a stream's whole lifetime for streaming RPCs).",
            ["role", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.rate_limited = _get_or_create(
            self.registry,
            "aeterna_rpc_rate_limited",
            Counter,
            "Calls or stream messages refused by the rate or stream limits.",
            ["role", "method", "reason"],
        )
        self.auth_failures = _get_or_create(
            self.registry,
            "aeterna_rpc_auth_failures",
            Counter,
            "Calls refused by authentication, by reason.",
            ["role", "method", "reason"],
        )

    def on_limited(self, method: str, reason: str) -> None:
        """Hook for the rate and stream limiters."""
        self.rate_limited.labels(self.role, method, reason).inc()

    def on_auth_failure(self, method: str, reason: str) -> None:
        """Hook for the auth interceptor."""
        self.auth_failures.labels(self.role, method, reason).inc()

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Record one finished call."""
        self.handled.labels(self.role, method, code.name).inc()
        self.latency.labels(self.role, method).observe(seconds)


@dataclass(frozen=True)
class Telemetry:
    """What the interceptors report to: a metrics registry and a tracer provider."""

    registry: CollectorRegistry | None = None
    """Prometheus registry; None is the process default (what ``start_metrics_server`` serves by default)."""
    tracer_provider: trace.TracerProvider | None = None
    """OpenTelemetry tracer provider; None is the global one."""


def _status_of(context: aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, AeternaError):
        return code_for(error)
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # The client went away or its deadline passed: the server did not fail.
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    if isinstance(error, aio.AbortError) or type(error).__name__ == "AbortError":
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


class _MetricHooks(PassThrough):
    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        start = time.perf_counter()
        failed: grpc.StatusCode | None = None
        try:
            return await call()
        except BaseException as caught:
            # Keep the code, never the exception: a local holding it would close a reference
            # cycle (exception -> traceback -> this frame -> exception) that keeps every frame
            # of the failed call alive, request batches included, until a full GC run.
            failed = _status_of(context, caught)
            raise
        finally:
            code = failed if failed is not None else _status_of(context, None)
            self._metrics.observe(method, code, time.perf_counter() - start)

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        start = time.perf_counter()
        failed: grpc.StatusCode | None = None
        try:
            async for item in responses:
                yield item
        except BaseException as caught:
            failed = _status_of(context, caught)  # the code only, as in ``unary``
            raise
        finally:
            code = failed if failed is not None else _status_of(context, None)
            self._metrics.observe(method, code, time.perf_counter() - start)


class MetricsInterceptor(HookedInterceptor):
    """Counts and times every call except health and reflection."""

    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__(_MetricHooks(metrics))


def _traced() -> Any:
    # Health and reflection are probes and tooling, not work: keep them out of traces.
    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))


def tracing_server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> aio.ServerInterceptor:
    """OpenTelemetry's aio server interceptor: extracts W3C context, one SERVER span per call."""
    # opentelemetry-instrumentation-grpc ships no annotations for its aio factories.
    interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider, filter_=_traced()
    )
    return interceptor


def tracing_client_interceptors(tracer_provider: trace.TracerProvider | None = None) -> list[aio.ClientInterceptor]:
    """OpenTelemetry's aio client interceptors (all four shapes): one CLIENT span per call, context injected."""
    # opentelemetry-instrumentation-grpc ships no annotations for its aio factories.
    interceptors: Sequence[aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider, filter_=_traced()
    )
    return list(interceptors)


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server."""

    port: int
    server: WSGIServer
    thread: Thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    telemetry: TelemetrySection, *, registry: CollectorRegistry | None = None, port: int | None = None
) -> MetricsEndpoint:
    """Serve ``registry`` on ``telemetry.metricsHost``:``telemetry.metricsPort`` (0 picks a port)."""
    bind_port = telemetry.metrics_port if port is None else port
    server, thread = prometheus_client.start_http_server(
        bind_port,
        addr=telemetry.metrics_host,
        registry=registry if registry is not None else prometheus_client.REGISTRY,
    )
    return MetricsEndpoint(port=int(server.server_port), server=server, thread=thread)


def start_metrics_server(telemetry: TelemetrySection, *, registry: CollectorRegistry | None = None) -> int:
    """Start ``/metrics`` (a daemon thread) and return the bound port; 0 when ``telemetry.metricsEnabled`` is off."""
    if not telemetry.metrics_enabled:
        return 0
    return serve_metrics(telemetry, registry=registry).port


def install_tracer_provider(telemetry: TelemetrySection, service: str) -> None:
    """Give the process an SDK tracer provider when tracing is on.

    Without one the OpenTelemetry API hands out no-op spans: no trace ids in
    the logs and no context carried from edge to central. Exporting spans is
    the deployment's choice (an OpenTelemetry Collector sidecar or the
    ``OTEL_*`` environment of an exporter package); ids exist either way.
    """
    if not telemetry.tracing_enabled:
        return
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only processes that trace need the SDK
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": f"aeterna-{service}"})))
