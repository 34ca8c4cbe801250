"""Spans leave both processes over OTLP, and an agent's write and its sync arrive as one trace.

An OTLP/gRPC receiver runs in this process (the collector's own
``TraceService`` from ``opentelemetry-proto``). Central finds it through the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable, the edge through its config
(``telemetry.otlpEndpoint``). An agent writes sessions at the edge; the edge's
background sync carries them to central. What the receiver holds once both
processes stopped gracefully (their last spans are flushed on the way out):

* spans from ``aeterna-edge`` and ``aeterna-central``, each resource with its
  version and instance id;
* the trace of the agent's PutSession: edge SERVER span -> the edge's send of
  the batch -> its SyncSessions CLIENT span -> central's SyncSessions SERVER
  span;
* when one batch carries the writes of two calls (written while central was
  down, sent on reconnect), the send is a child of the first write's trace and
  links to the second's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aeterna.edge.v1 import edge_pb2
from aeterna.sync.v1 import sync_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.e2e.conftest import central_document, edge_document
from tests.support.clients import Client, make_session
from tests.support.services import ServiceFactory
from tests.support.waiting import wait_until

SEND_SPAN = "aeterna.edge.sync sessions"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it, with the resource it came from."""

    service: str
    instance: str
    version: str
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return self.span.name


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []

    def Export(  # the collector's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            attributes.get("service.name", ""),
                            attributes.get("service.instance.id", ""),
                            attributes.get("service.version", ""),
                            span,
                        )
                    )
        with self._lock:
            self.spans += received
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The receiver, serving on a free port; yields it with its ``http://`` endpoint."""
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # opentelemetry-proto's generated *_pb2_grpc modules carry no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)


def one(spans: list[ReceivedSpan], service: str, kind: int, name_suffix: str, trace_id: bytes) -> ReceivedSpan:
    """The one span of ``service`` with ``kind`` whose name ends with ``name_suffix`` in trace ``trace_id``."""
    found = [
        s
        for s in spans
        if s.service == service and s.span.kind == kind and s.name.endswith(name_suffix) and s.span.trace_id == trace_id
    ]
    names = sorted({(s.service, s.name) for s in spans if s.span.trace_id == trace_id})
    assert len(found) == 1, f"{service} {name_suffix}: {len(found)} spans in the trace, which holds {names}"
    return found[0]


def put_span(spans: list[ReceivedSpan], session_id: str) -> ReceivedSpan:
    """The edge's PutSession SERVER span of ``session_id`` (each PutSession is the root of its own trace)."""
    puts = [s for s in spans if s.service == "aeterna-edge" and s.name.endswith("EdgeService/PutSession")]
    assert puts, f"no PutSession span reached the receiver; services seen: {sorted({s.service for s in spans})}"
    order = ["s-1", "s-2", "s-3"]
    puts.sort(key=lambda s: s.span.start_time_unix_nano)
    assert len(puts) == len(order)
    return puts[order.index(session_id)]


def chain_to_central(spans: list[ReceivedSpan], put: ReceivedSpan) -> ReceivedSpan:
    """Assert put -> send -> CLIENT SyncSessions -> central SERVER SyncSessions in put's trace; returns the send."""
    trace_id = put.span.trace_id
    send = one(spans, "aeterna-edge", trace_pb2.Span.SPAN_KIND_INTERNAL, SEND_SPAN, trace_id)
    client = one(spans, "aeterna-edge", trace_pb2.Span.SPAN_KIND_CLIENT, "SyncService/SyncSessions", trace_id)
    server = one(spans, "aeterna-central", trace_pb2.Span.SPAN_KIND_SERVER, "SyncService/SyncSessions", trace_id)
    assert put.span.parent_span_id == b"", "the agent sent no trace context: its PutSession starts the trace"
    assert send.span.parent_span_id == put.span.span_id
    assert client.span.parent_span_id == send.span.span_id
    assert server.span.parent_span_id == client.span.span_id
    return send


async def test_put_session_and_its_sync_arrive_as_one_trace(
    services: ServiceFactory, database_url: str, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    received, endpoint = receiver
    central = services.make("central", "central", central_document(database_url, tmp_path / "central" / "data"))
    central.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # the standard variable
    central.start()
    document = edge_document(central.port, tmp_path / "edge" / "data", "edge-1", "us-west-2")
    document["sync"]["memoryLayers"]["session"]["interval"] = "300ms"  # the background flush, soon
    document["telemetry"]["otlpEndpoint"] = endpoint  # the config key
    edge = services.make("edge", "edge-1", document).start()

    agent = Client(edge.target, agent="agent-7")
    try:

        async def central_holds(*session_ids: str) -> bool:
            reader = Client(central.target, agent="edge-1")
            try:
                for session_id in session_ids:
                    try:
                        await reader.sync.GetSession(sync_pb2.GetSessionRequest(session_id=session_id), timeout=5)
                    except grpc.aio.AioRpcError as error:
                        if error.code() == grpc.StatusCode.NOT_FOUND:
                            return False
                        raise
                return True
            finally:
                await reader.close()

        async def link_is(state: int) -> bool:
            return (await agent.status()).link_state == state

        await wait_until(lambda: link_is(edge_pb2.LINK_STATE_ONLINE), "the edge is online")
        # Online: the periodic background flush carries the write to central.
        await agent.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s-1", "hello")))
        await wait_until(lambda: central_holds("s-1"), "central holds s-1")

        # Central down: two calls' writes queue, and go to central in one send on reconnect.
        assert central.stop() == 0
        central.keep_port()
        await wait_until(lambda: link_is(edge_pb2.LINK_STATE_OFFLINE), "the edge is offline")
        await agent.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s-2", "second")))
        await agent.edge.PutSession(edge_pb2.PutSessionRequest(session=make_session("s-3", "third")))
        central.start()
        await wait_until(lambda: central_holds("s-2", "s-3"), "central holds s-2 and s-3")
    finally:
        await agent.close()
    assert edge.stop() == 0
    assert central.stop() == 0

    spans = list(received.spans)
    services_seen = {s.service for s in spans}
    assert {"aeterna-edge", "aeterna-central"} <= services_seen, services_seen
    assert all(s.version and s.instance for s in spans)
    central_instances = {s.instance for s in spans if s.service == "aeterna-central"}
    assert len(central_instances) == 2, "each central process is its own service instance"

    chain_to_central(spans, put_span(spans, "s-1"))

    second, third = put_span(spans, "s-2"), put_span(spans, "s-3")
    send = chain_to_central(spans, second)
    assert [(link.trace_id, link.span_id) for link in send.span.links] == [(third.span.trace_id, third.span.span_id)], (
        "the batch also carried s-3's write: the send links to that call's trace"
    )
    assert third.span.trace_id != second.span.trace_id
    assert not any(s.name == SEND_SPAN and s.span.trace_id == third.span.trace_id for s in spans), (
        "s-3 went in s-2's send, not in one of its own"
    )
