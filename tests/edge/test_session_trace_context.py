"""A traced session write leaves its W3C trace context with the change it queues, and nothing else changes.

The context rides in the pending-change hash and the outbox item (key
``trace``; ``edge_svc.trace_context``); an untraced write queues the very item
it always did (``tests/edge/test_records_session_formats.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from edge_svc.deps import EdgeDeps
from edge_svc.records import Channel, Message, SessionRecord
from edge_svc.trace_context import MAX_TRACES

TENANT = "default"


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@contextmanager
def serving(trace_id: int, span_id: int) -> Iterator[None]:
    """Inside the span of a call being served (what the tracing interceptor sets up)."""
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(context)):
        yield


async def test_traced_writes_carry_their_contexts_into_the_outbox(offline_edge: EdgeDeps) -> None:
    node = offline_edge.node
    await node.sessions.put(TENANT, SessionRecord("plain", "u", [Message("user", "hi", 1, {}, "m0")], {}, 5))
    with serving(0xA1, 0x1):
        await node.sessions.put(TENANT, SessionRecord("traced", "u", [Message("user", "hi", 1, {}, "m1")], {}, 5))
    for index in range(MAX_TRACES + 2):  # more writes than contexts kept; one repeats the first
        with serving(0xA1 if index == 0 else 0xB0 + index, 0x1 if index == 0 else 0x10 + index):
            await node.sessions.append(
                TENANT,
                session_id="traced",
                user_id="u",
                messages=[Message("user", f"t{index}", message_id=f"t{index}")],
                state_patch={},
            )

    assert await node.sync.collect_sessions() == 2
    [batch] = node.outbox.pending(Channel.SESSIONS, 10)
    items = {item["id"]: item for item in batch.items}
    assert "trace" not in items["plain"]
    assert json.dumps(items["plain"], separators=(",", ":")) == (
        '{"id":"plain","user":"u","messages":[{"id":"m0","role":"user","content":"hi","t":1,"meta":{}}],'
        '"state":{},"t":5,"tenant":"default","kind":"replace"}'
    )
    contexts = items["traced"]["trace"].split()
    # The first writes' contexts, each once, in the order written.
    assert contexts == [traceparent(0xA1, 0x1)] + [traceparent(0xB0 + i, 0x10 + i) for i in range(1, MAX_TRACES)]
    assert list(items["traced"])[-1] == "trace"
    assert items["traced"]["kind"] == "replace"  # a PutSession since the last sync: sent whole

    # Collected: the next write starts a fresh list.
    with serving(0xC0, 0x2):
        await node.sessions.append(
            TENANT,
            session_id="traced",
            user_id="u",
            messages=[Message("user", "again", message_id="x")],
            state_patch={},
        )
    await node.sync.collect_sessions()
    [_, appended] = node.outbox.pending(Channel.SESSIONS, 10)
    [change] = appended.items
    assert (change["kind"], change["trace"]) == ("append", traceparent(0xC0, 0x2))
