"""Log lines are JSON with the trace ids of the call being served."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from aeterna_shared.logs import JsonFormatter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("central.sync", logging.WARNING, __file__, 1, message, (), None)


def test_json_line_carries_the_current_trace() -> None:
    formatter = JsonFormatter("central")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("SyncSessions") as span:
        line = formatter.format(_record("batch refused: BAD_SIGNATURE"))
    entry = json.loads(line)
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["service"] == "central"
    assert entry["level"] == "WARNING"
    assert entry["message"] == "batch refused: BAD_SIGNATURE"


def test_json_line_outside_a_call_has_no_trace_ids() -> None:
    entry = json.loads(JsonFormatter("edge").format(_record("started")))
    assert "trace_id" not in entry
    assert entry["logger"] == "central.sync"
