"""Trace context carried from a session write to the sync that delivers it to central.

A PutSession (or AppendSession) is answered as soon as the session is in the
edge's session store; the sync that carries it to central runs later, in a
background task, outside the write's span. So that the agent's call and
central's SyncSessions still arrive as one trace, the write's W3C
``traceparent`` travels with the data it made dirty:

1. the write stores it in the session's pending-change hash (field ``trace``,
   next to ``kind``/``from``/``patch``; ``edge_svc.memory``), in the same
   transaction as the write. Several writes before the next collection keep
   the first ``MAX_TRACES`` distinct contexts, space-separated;
2. the collector copies the field into the session change (the outbox item,
   key ``trace``; absent when the writes carried no context, so the stored
   formats of ``edge_svc.records`` are unchanged for them);
3. the send of a batch (``edge_svc.api.central_client``) opens a span whose
   parent is the first context of its items and which links to all the
   others: a batch merges the writes of many calls, and a span has one
   parent. The SyncSessions CLIENT span is that span's child, and central's
   SERVER span the client span's (``traceparent`` in the call's metadata).

Only the OpenTelemetry API is used: with tracing off there is no valid
current span, nothing is stored, and the send span is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

MAX_TRACES = 8
"""Contexts kept per session between two collections (the first ones: the writes that made it dirty)."""
MAX_LINKS = 128
"""Links on one send span (the SDK's default limit)."""

PENDING_FIELD = "trace"
"""The field of the pending-change hash, and the key of the outbox item, that holds the contexts."""

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer(__name__)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the span being served, or None when there is none (tracing off)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def merged(stored: str | None, traceparent: str) -> str:
    """``stored`` (space-separated contexts) with ``traceparent`` added, at most ``MAX_TRACES`` kept."""
    contexts = stored.split() if stored else []
    if traceparent not in contexts and len(contexts) < MAX_TRACES:
        contexts.append(traceparent)
    return " ".join(contexts)


def _span_contexts(traceparents: Iterable[str]) -> list[trace.SpanContext]:
    found: list[trace.SpanContext] = []
    seen: set[tuple[int, int]] = set()
    for traceparent in traceparents:
        context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent})).get_span_context()
        key = (context.trace_id, context.span_id)
        if context.is_valid and key not in seen:
            seen.add(key)
            found.append(context)
    return found


@contextlib.contextmanager
def sending(name: str, items: Iterable[dict[str, Any]], **attributes: Any) -> Iterator[None]:
    """A span around the send of ``items`` (outbox items), child of the first write's context, linked
    to the others; the calls made inside it are its children."""
    traceparents = (tp for item in items for tp in str(item.get(PENDING_FIELD) or "").split())
    contexts = _span_contexts(traceparents)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else Context()
    links = [trace.Link(context) for context in contexts[1 : MAX_LINKS + 1]]
    with _tracer.start_as_current_span(name, context=parent, links=links, attributes=attributes):
        yield
