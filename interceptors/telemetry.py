"""Traces and metrics for RPCs, in the shapes stock tooling reads.

Traces use OpenTelemetry's gRPC instrumentation (its aio server interceptor
and aio client interceptors), which carry W3C trace context (``traceparent``)
in metadata, so a span started at the edge is the parent of central's server
span. Health checks and reflection are excluded from traces and metrics.
``install_tracer_provider`` gives the process an SDK tracer provider and, when
a collector is configured, a ``BatchSpanProcessor`` exporting over OTLP/gRPC;
``shutdown_tracer_provider`` flushes it on the way out. Which settings win:

* a ``telemetry.*`` key set in the config wins over the standard variable
  (``otlpEndpoint`` over ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``otlpInsecure`` over
  ``OTEL_EXPORTER_OTLP_(TRACES_)INSECURE``, ``serviceName`` over
  ``OTEL_SERVICE_NAME``); a key left unset defers to the variable, so an
  operator (or the OpenTelemetry Operator injecting ``OTEL_*``) configures a
  deployment without touching its config;
* no endpoint anywhere: spans are created (trace ids in logs, context carried
  to central) but not exported, unless ``OTEL_TRACES_EXPORTER=otlp`` asks for
  the exporter's default ``localhost:4317``; ``OTEL_TRACES_EXPORTER=none``
  turns export off when only variables name an endpoint;
* ``OTEL_SDK_DISABLED=true``: no SDK provider at all (no-op spans);
* everything else is the SDK's and the exporter's own reading of the
  environment: ``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``),
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``,
  ``..._CERTIFICATE``, ``..._TIMEOUT``, ``..._COMPRESSION``, ``OTEL_BSP_*``.

The resource carries ``service.name``, ``service.version`` (the installed
package's) and ``service.instance.id`` (one per process unless
``OTEL_RESOURCE_ATTRIBUTES`` names one).

Metrics are Prometheus collectors on a ``CollectorRegistry`` passed in (the
process default when none is given), served on ``/metrics`` by
``start_metrics_server``. The RPC series are the grpc-ecosystem names
(go-grpc-prometheus, py-grpc-prometheus), so stock gRPC dashboards and alerts
work unchanged:

* ``grpc_server_started_total{grpc_type,grpc_service,grpc_method}``
* ``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}``
  (``grpc_code`` spelled as Go spells it: ``OK``, ``Unauthenticated``,
  ``ResourceExhausted``, ``Canceled``...)
* ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``
  ``{grpc_type,grpc_service,grpc_method}`` (stream messages one by one)
* ``grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}``
  (histogram; for streams: the stream's lifetime)

and two of the project's own, which no stock series covers:

* ``aeterna_rpc_rate_limited_total{role,method,reason}`` (rate limit and stream limit refusals)
* ``aeterna_rpc_auth_failures_total{role,method,reason}``
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING, Any, TypeVar
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
from interceptors.handlers import PUBLIC_PREFIXES, PassThrough, UnaryCall, wrap_handler

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

_log = logging.getLogger(__name__)

_C = TypeVar("_C", Counter, Histogram)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""``grpc_server_handling_seconds`` buckets: Prometheus' defaults (as go-grpc-prometheus uses) with finer
low ones for the edge's sub-millisecond answers and longer high ones for sync streams."""

GRPC_CODE_LABELS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
"""``grpc_code`` values: Go's ``codes.Code.String()``, which the stock dashboards and alerts match on."""


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


_CALL_LABELS = ["grpc_type", "grpc_service", "grpc_method"]

Labels = tuple[str, str, str]
"""(grpc_type, grpc_service, grpc_method) of one method."""


def call_labels(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Labels:
    """The grpc-ecosystem labels of ``method`` (``/pkg.Service/Method``) served by ``handler``."""
    if handler.request_streaming and handler.response_streaming:
        kind = "bidi_stream"
    elif handler.request_streaming:
        kind = "client_stream"
    elif handler.response_streaming:
        kind = "server_stream"
    else:
        kind = "unary"
    service, _, name = method.lstrip("/").rpartition("/")
    return kind, service, name


class RpcMetrics:
    """The RPC collectors of one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, role: str = "central") -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.role = role
        self.started = _get_or_create(
            self.registry, "grpc_server_started", Counter, "RPCs started on the server.", _CALL_LABELS
        )
        self.handled = _get_or_create(
            self.registry,
            "grpc_server_handled",
            Counter,
            "RPCs completed on the server, regardless of success or failure.",
            [*_CALL_LABELS, "grpc_code"],
        )
        self.received = _get_or_create(
            self.registry,
            "grpc_server_msg_received",
            Counter,
            "RPC stream messages received on the server.",
            _CALL_LABELS,
        )
        self.sent = _get_or_create(
            self.registry, "grpc_server_msg_sent", Counter, "gRPC stream messages sent by the server.", _CALL_LABELS
        )
        self.latency = _get_or_create(
            self.registry,
            "grpc_server_handling_seconds",
            Histogram,
            "Time the server took to handle an RPC (a stream's whole lifetime for streaming RPCs).",
            _CALL_LABELS,
            buckets=LATENCY_BUCKETS,
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

    def observe(self, labels: Labels, code: grpc.StatusCode, seconds: float) -> None:
        """Record one finished call."""
        self.handled.labels(*labels, GRPC_CODE_LABELS.get(code, code.name)).inc()
        self.latency.labels(*labels).observe(seconds)


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
    """The hooks of one call: counts it started, its messages each way, and how it ended."""

    def __init__(self, metrics: RpcMetrics, labels: Labels) -> None:
        self._metrics = metrics
        self._labels = labels
        self._unary_request = labels[0] in {"unary", "server_stream"}

    def _start(self) -> float:
        self._metrics.started.labels(*self._labels).inc()
        if self._unary_request:
            self._metrics.received.labels(*self._labels).inc()
        return time.perf_counter()

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        start = self._start()
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
            if code is grpc.StatusCode.OK:
                self._metrics.sent.labels(*self._labels).inc()
            self._metrics.observe(self._labels, code, time.perf_counter() - start)

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        start = self._start()
        sent = self._metrics.sent.labels(*self._labels)
        failed: grpc.StatusCode | None = None
        try:
            async for item in responses:
                sent.inc()
                yield item
        except BaseException as caught:
            failed = _status_of(context, caught)  # the code only, as in ``unary``
            raise
        finally:
            code = failed if failed is not None else _status_of(context, None)
            self._metrics.observe(self._labels, code, time.perf_counter() - start)

    async def requests(
        self, method: str, context: aio.ServicerContext[Any, Any], requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        received = self._metrics.received.labels(*self._labels)
        async for item in requests:
            received.inc()
            yield item


class MetricsInterceptor(aio.ServerInterceptor):
    """Counts and times every call except health and reflection (the grpc-ecosystem series)."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        self._labels: dict[str, Labels] = {}

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        labels = self._labels.get(method)
        if labels is None:
            labels = self._labels.setdefault(method, call_labels(method, handler))
        return wrap_handler(handler, method, _MetricHooks(self._metrics, labels))


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


# --- tracer provider and OTLP export ---------------------------------------------------------


@dataclass(frozen=True)
class TraceExport:
    """Where spans go, as resolved from the config and the ``OTEL_*`` environment."""

    endpoint: str | None
    """The OTLP/gRPC endpoint; None: the exporter's default (``OTEL_TRACES_EXPORTER=otlp`` alone)."""
    insecure: bool | None
    """Plaintext; None: the exporter decides from ``OTEL_EXPORTER_OTLP_(TRACES_)INSECURE`` and the scheme."""


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def trace_export(telemetry: TelemetrySection, environ: Mapping[str, str]) -> TraceExport | None:
    """Whether and where spans are exported (None: not at all); config keys win over the variables."""
    if telemetry.otlp_endpoint:
        return TraceExport(telemetry.otlp_endpoint, telemetry.otlp_insecure)
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if "none" in exporters:
        return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint or "otlp" in exporters:
        return TraceExport(endpoint or None, telemetry.otlp_insecure)
    return None


def service_resource(telemetry: TelemetrySection, role: str) -> Any:
    """The SDK ``Resource`` of this process: our defaults < ``OTEL_RESOURCE_ATTRIBUTES`` /
    ``OTEL_SERVICE_NAME`` (the process environment) < ``telemetry.serviceName``."""
    from opentelemetry.sdk.resources import (  # noqa: PLC0415 - only processes that trace need the SDK
        SERVICE_INSTANCE_ID,
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )

    try:
        version = importlib.metadata.version("aeterna-hybrid")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    defaults = {SERVICE_NAME: f"aeterna-{role}", SERVICE_VERSION: version, SERVICE_INSTANCE_ID: str(uuid.uuid4())}
    # Resource.create lets its argument win over the environment; merging the detector's reading
    # of OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME again on top turns that round.
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    if telemetry.service_name:
        resource = resource.merge(Resource({SERVICE_NAME: telemetry.service_name}))
    return resource


def install_tracer_provider(telemetry: TelemetrySection, role: str) -> SdkTracerProvider | None:
    """Give the process an SDK tracer provider when tracing is on; returns it (None: none installed).

    Without one the OpenTelemetry API hands out no-op spans: no trace ids in
    the logs and no context carried from edge to central. With an OTLP
    endpoint (``trace_export``) finished spans are batched to it; the caller
    hands the provider to ``shutdown_tracer_provider`` when the process stops,
    so the last spans (those of the graceful stop included) leave too.
    """
    if not telemetry.tracing_enabled:
        return None
    if _true(os.environ.get("OTEL_SDK_DISABLED")):
        _log.info("OTEL_SDK_DISABLED is true: no spans are created")
        return None
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - only processes that trace need the SDK

    # The sampler is the SDK's reading of OTEL_TRACES_SAMPLER (default parentbased_always_on). The
    # provider also flushes at interpreter exit, for the paths that do not call shutdown_tracer_provider.
    provider = TracerProvider(resource=service_resource(telemetry, role))
    export = trace_export(telemetry, os.environ)
    if export is not None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        exporter = OTLPSpanExporter(endpoint=export.endpoint, insecure=export.insecure)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _log.info("exporting traces over OTLP/gRPC to %s", export.endpoint or "the exporter's default endpoint")
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracer_provider(provider: SdkTracerProvider | None, timeout_seconds: float = 10.0) -> None:
    """Export the spans still buffered and stop the exporter (the processes' last step on a graceful stop)."""
    if provider is None:
        return
    if not provider.force_flush(int(timeout_seconds * 1000)):
        _log.warning("not every span reached the trace collector within %.0f s", timeout_seconds)
    provider.shutdown()
