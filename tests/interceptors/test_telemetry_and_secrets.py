"""Trace context edge -> central, Prometheus /metrics, OAuth2 client credentials, and no secret leaks."""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import grpc
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from aeterna_client.channel import open_central_channel
from aeterna_client.credentials import ApiKeyCredentials, OAuth2ClientCredentials
from aeterna_shared.config.model import TelemetrySection
from aeterna_shared.errors import Unauthenticated
from interceptors.telemetry import Telemetry, TraceExport, serve_metrics, service_resource, trace_export
from tests.interceptors.conftest import SHAPES, JwtIssuer, ServeFactory, edge_config, server_config, shape_calls
from tests.support.tls import TlsMaterial


async def test_edge_span_is_parent_of_central_span(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running = await serve(server_config(tls_material), telemetry=Telemetry(tracer_provider=provider))
    telemetry = Telemetry(tracer_provider=provider)
    tracer = provider.get_tracer("edge-test")
    async with open_central_channel(edge_config(tls_material, running.port), telemetry=telemetry) as channel:
        with tracer.start_as_current_span("edge.flush") as root:
            await sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest())
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    spans = exporter.get_finished_spans()
    client = next(s for s in spans if s.kind == SpanKind.CLIENT)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert client.parent is not None
    assert client.parent.span_id == root.get_span_context().span_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == root.get_span_context().trace_id
    assert server.parent.is_remote
    # Health checks are not traced, on either side.
    assert not any("Health" in s.name for s in spans)


async def test_metrics_endpoint(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    registry = CollectorRegistry()
    running = await serve(
        server_config(
            tls_material, {"sync": {"auth": {"method": "apiKey"}}, "central": {"apiKeys": {"edge-a": "sk-m"}}}
        ),
        telemetry=Telemetry(registry=registry),
    )
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials("sk-m")
    ) as ok:
        await sync_pb2_grpc.SyncServiceStub(ok).SearchVectors(sync_pb2.SearchVectorsRequest())
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials("sk-x")
    ) as bad:
        with pytest.raises(grpc.RpcError):
            await sync_pb2_grpc.SyncServiceStub(bad).SearchVectors(sync_pb2.SearchVectorsRequest())
    endpoint = serve_metrics(
        server_config(tls_material, {"telemetry": {"metricsPort": 0}}).telemetry, registry=registry
    )
    try:
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{endpoint.port}/metrics")
    finally:
        endpoint.close()
    method = "/aeterna.sync.v1.SyncService/SearchVectors"
    # The grpc-ecosystem series (go-grpc-prometheus names and labels, Go's spelling of the codes).
    call = 'grpc_method="SearchVectors",grpc_service="aeterna.sync.v1.SyncService",grpc_type="unary"'
    assert f"grpc_server_started_total{{{call}}} 2.0" in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{call}}} 1.0' in text
    assert f'grpc_server_handled_total{{grpc_code="Unauthenticated",{call}}} 1.0' in text
    assert f"grpc_server_msg_received_total{{{call}}} 2.0" in text
    assert f"grpc_server_msg_sent_total{{{call}}} 1.0" in text  # the refused call sent no response
    assert f"grpc_server_handling_seconds_count{{{call}}} 2.0" in text
    assert f'grpc_server_handling_seconds_bucket{{{call},le="+Inf"}} 2.0' in text
    assert f'aeterna_rpc_auth_failures_total{{method="{method}",reason="INVALID_API_KEY",role="central"}} 1.0' in text
    assert "aeterna_rpc_requests_total" not in text
    assert "sk-x" not in text
    assert "sk-m" not in text


async def test_stream_metrics_count_each_message(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    """Every shape has its ``grpc_type``, and streamed messages are counted one by one, each way."""
    registry = CollectorRegistry()
    running = await serve(server_config(tls_material), telemetry=Telemetry(registry=registry))
    async with open_central_channel(edge_config(tls_material, running.port)) as channel:
        calls = shape_calls(channel)
        assert len([reply async for reply in calls.unary_stream(b"q")]) == 3

        async def four() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"m"

        await calls.stream_unary(four())
        bidi = calls.stream_stream()
        for _ in range(2):
            await bidi.write(b"e")
            assert await bidi.read() == b"e"
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    def value(name: str, method: str, **labels: str) -> float | None:
        wanted = {"grpc_service": SHAPES, "grpc_method": method, **labels}
        return registry.get_sample_value(name, wanted)

    assert value("grpc_server_handled_total", "UnaryStream", grpc_type="server_stream", grpc_code="OK") == 1
    assert value("grpc_server_msg_received_total", "UnaryStream", grpc_type="server_stream") == 1
    assert value("grpc_server_msg_sent_total", "UnaryStream", grpc_type="server_stream") == 3
    assert value("grpc_server_handled_total", "StreamUnary", grpc_type="client_stream", grpc_code="OK") == 1
    assert value("grpc_server_msg_received_total", "StreamUnary", grpc_type="client_stream") == 4
    assert value("grpc_server_msg_sent_total", "StreamUnary", grpc_type="client_stream") == 1
    assert value("grpc_server_handled_total", "StreamStream", grpc_type="bidi_stream", grpc_code="OK") == 1
    assert value("grpc_server_msg_received_total", "StreamStream", grpc_type="bidi_stream") == 2
    assert value("grpc_server_msg_sent_total", "StreamStream", grpc_type="bidi_stream") == 2
    # Health checks are probes, not work: not counted.
    assert not [
        sample
        for metric in registry.collect()
        for sample in metric.samples
        if sample.labels.get("grpc_service") == "grpc.health.v1.Health"
    ]


# --- where spans go: config keys over OTEL_* variables -----------------------------------------


@pytest.mark.parametrize(
    ("keys", "environ", "expected"),
    [
        ({}, {}, None),  # no endpoint anywhere: spans stay in the process
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, TraceExport("http://c:4317", None)),
        (
            {},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"},
            TraceExport("http://t:4317", None),
        ),
        (
            {"otlpEndpoint": "https://k:4317"},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
            TraceExport("https://k:4317", None),
        ),
        ({"otlpEndpoint": "k:4317", "otlpInsecure": True}, {}, TraceExport("k:4317", True)),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"otlpEndpoint": "http://k:4317"}, {"OTEL_TRACES_EXPORTER": "none"}, TraceExport("http://k:4317", None)),
        ({}, {"OTEL_TRACES_EXPORTER": "otlp"}, TraceExport(None, None)),  # the exporter's default endpoint
    ],
)
def test_trace_export_config_wins_over_the_variables(
    keys: dict[str, Any], environ: dict[str, str], expected: TraceExport | None
) -> None:
    telemetry = TelemetrySection.model_validate(keys)
    assert trace_export(telemetry, environ) == expected


def test_service_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.instance.id=pod-7")
    resource = service_resource(TelemetrySection(), "edge").attributes
    assert resource["service.name"] == "aeterna-edge"
    assert resource["service.version"] == importlib.metadata.version("aeterna-hybrid")
    assert resource["service.instance.id"] == "pod-7"
    assert resource["deployment.environment"] == "prod"
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert service_resource(TelemetrySection(), "central").attributes["service.name"] == "from-env"
    assert len(str(service_resource(TelemetrySection(), "central").attributes["service.instance.id"])) == 36
    configured = TelemetrySection.model_validate({"serviceName": "from-config"})
    assert service_resource(configured, "central").attributes["service.name"] == "from-config"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


# --- OAuth2 client credentials against a real local token endpoint -----------------------


class _TokenEndpoint(BaseHTTPRequestHandler):
    issuer: JwtIssuer
    requests: list[dict[str, str]]
    lifetime: int

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = dict(urllib.parse.parse_qsl(body))
        user, _, password = base64.b64decode(self.headers["Authorization"].split()[1]).decode().partition(":")
        self.requests.append({"client": user, **form})
        if (user, password) != ("edge-a-client", "s3cret-client-secret") or form.get(
            "grant_type"
        ) != "client_credentials":
            self.send_response(401)
            self.end_headers()
            return
        token = self.issuer.token("edge-a", lifetime=self.lifetime, tenant="tenant-a", scope="sync")
        payload = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def token_endpoint(jwt_issuer: JwtIssuer) -> Iterator[tuple[str, list[dict[str, str]]]]:
    requests: list[dict[str, str]] = []
    handler = type("Handler", (_TokenEndpoint,), {"issuer": jwt_issuer, "requests": requests, "lifetime": 600})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_oauth2_client_credentials_end_to_end(
    serve: ServeFactory, tls_material: TlsMaterial, jwt_issuer: JwtIssuer, token_endpoint: Any
) -> None:
    url, requests = token_endpoint
    running = await serve(
        server_config(
            tls_material,
            {
                "sync": {
                    "auth": {
                        "method": "oauth2",
                        "jwt": {"jwksFile": str(jwt_issuer.jwks_file), "issuer": jwt_issuer.issuer},
                    }
                }
            },
        )
    )
    config = edge_config(
        tls_material,
        running.port,
        {
            "sync": {
                "auth": {
                    "method": "oauth2",
                    "tokenUrl": url,
                    "clientId": "edge-a-client",
                    "clientSecret": "s3cret-client-secret",
                    "scope": "sync",
                }
            }
        },
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        for _ in range(3):
            await stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-a"))
    # One token served all three calls.
    assert len(requests) == 1
    assert requests[0]["scope"] == "sync"


async def test_oauth2_token_is_refreshed_before_expiry(token_endpoint: Any) -> None:
    url, requests = token_endpoint
    now = [1000.0]
    source = OAuth2ClientCredentials(url, "edge-a-client", "s3cret-client-secret", clock=lambda: now[0])
    first = await source.token()
    assert await source.token() == first
    now[0] += 600 - 61  # more than a minute before expiry: still cached
    assert await source.token() == first
    now[0] += 2  # inside the refresh margin
    await source.token()
    assert source.fetches == 2
    assert len(requests) == 2


async def test_oauth2_wrong_client_secret(token_endpoint: Any) -> None:
    url, _ = token_endpoint
    source = OAuth2ClientCredentials(url, "edge-a-client", "wrong-secret-value")
    with pytest.raises(Unauthenticated) as raised:
        await source.token()
    assert getattr(raised.value, "reason", "") == "TOKEN_REQUEST_REFUSED"
    assert "wrong-secret-value" not in str(raised.value)


# --- secrets never leave ---------------------------------------------------------------------


async def test_credentials_never_appear_in_logs_or_statuses(
    serve: ServeFactory, tls_material: TlsMaterial, jwt_issuer: JwtIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_key = "sk-TOP-SECRET-never-log-me"
    running = await serve(
        server_config(
            tls_material, {"sync": {"auth": {"method": "apiKey"}}, "central": {"apiKeys": {"edge-a": "sk-other"}}}
        )
    )
    oauth = await serve(
        server_config(
            tls_material,
            {
                "sync": {
                    "auth": {
                        "method": "oauth2",
                        "jwt": {"jwksFile": str(jwt_issuer.jwks_file), "issuer": jwt_issuer.issuer},
                    }
                }
            },
        )
    )
    expired_token = jwt_issuer.token("edge-a", lifetime=-600)
    seen: list[str] = []
    for target, credential in ((running, secret_key), (oauth, expired_token), (oauth, "Basic " + secret_key)):
        config = edge_config(tls_material, target.port)
        async with open_central_channel(config, credentials=ApiKeyCredentials(credential)) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                await sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest())
        error = raised.value
        seen += [error.details() or "", str(error), repr(error.trailing_metadata())]
    seen += [record.getMessage() for record in caplog.records]
    seen += [record.exc_text or "" for record in caplog.records]
    for text in seen:
        assert secret_key not in text
        assert expired_token not in text
        assert expired_token.split(".")[2] not in text
