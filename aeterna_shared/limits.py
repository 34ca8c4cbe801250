"""What central can store: one set of limits, checked by the edge's API and by central's admission.

An edge answers OK only for what it will be able to deliver, and central can
only deliver what PostgreSQL can hold. So both run these very checks: the edge
on each write (a bad value is INVALID_ARGUMENT naming the field, before the
agent is answered), central on each item of a batch (a bad item fails alone
with ``ITEM_FAILURE_REASON`` in the ack; the rest of the batch is applied).

The rules:

* text never holds NUL (PostgreSQL ``text`` and ``jsonb`` cannot) nor a lone
  surrogate (not encodable as UTF-8);
* lengths are counted in bytes of UTF-8, because that is what an index entry
  holds. Every indexed text column fits PostgreSQL's B-tree limit (an index
  row of at most 2,704 bytes, a third of an 8 KiB page) even at the maximum
  lengths and incompressible content: the largest index is ``decisions_effective``
  on (tenant_id, resource), ``MAX_ID_BYTES + MAX_RESOURCE_BYTES`` plus headers;
  ``test_limits_fit_every_index`` checks the sums against the migrations;
* JSON (metadata, payloads, session state, Cedar contexts) is JSON data only:
  string keys, finite numbers, at most ``MAX_JSON_DEPTH`` levels and about
  ``MAX_JSON_BYTES`` encoded;
* vector components are finite, and a vector (or an embedding) is not all zeros:
  cosine similarity, which central's index uses, has no direction for it;
* times lie within years 1-9999, the range of ``google.protobuf.Timestamp``.

Everything raises ``InvalidArgument.for_field`` with a stable reason:

``UNSTORABLE_VALUE`` (NUL or lone surrogate), ``VALUE_TOO_LONG``, ``NOT_JSON``,
``JSON_TOO_DEEP``, ``NOT_FINITE``, ``ZERO_VECTOR``, ``INVALID_TIMESTAMP``.

Sizes are representation-independent: a JSON number counts as ``_NUMBER_BYTES``
whether it is held as ``1``, ``1.0`` or a protobuf double, so the edge (plain
dicts) and central (protobuf ``Struct``) measure the same document alike.

JSON is walked generically (``Mapping`` / non-string ``Sequence``), so plain
dicts and lists and protobuf ``Struct`` / ``ListValue`` are checked alike. This
module is plain Python: it imports neither grpc nor generated code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aeterna_shared.errors import InvalidArgument

MAX_ID_BYTES = 256
"""Ids and owner names: session, episode, decision, vector, message, batch, user, agent and tenant ids."""
MAX_NAME_BYTES = 256
"""Short names: a message's role, a region."""
MAX_PRINCIPAL_BYTES = 1024
"""A Cedar principal uid, e.g. ``User::"alice"``."""
MAX_ACTION_BYTES = 1024
"""A Cedar action uid, e.g. ``Action::"approve"``."""
MAX_RESOURCE_BYTES = 2048
"""A Cedar resource uid; indexed with the tenant id in ``decisions_effective``."""
MAX_TEXT_BYTES = 1024 * 1024
"""Free text: an episode's content, a message's content."""
MAX_JSON_BYTES = 1024 * 1024
"""One JSON document (metadata, payload, state, context), encoded."""
MAX_HELD_BATCH_IDS = 256
"""Batch ids one ``GetSyncCheckpoint`` may ask central's stored acks for (an edge names its oldest unacked
batches, ``MAX_HELD_BATCH_IDS // 4`` per channel)."""
MAX_JSON_DEPTH = 24
"""Nesting levels of one JSON document (objects and arrays). Protobuf decoders stop at 100 nested
messages and each level of a ``Struct`` costs three (Struct, map entry, Value): 24 levels leave room
for the messages around the document on every path from an agent to central."""

BTREE_MAX_ROW_BYTES = 2704
"""PostgreSQL's largest B-tree index row on 8 KiB pages (``index row size ... exceeds ... maximum 2704``)."""

MIN_EPOCH_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z."""
MAX_EPOCH_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z."""

_NUMBER_BYTES = 24
"""What one JSON number counts for in a size (the longest ``repr`` of a double)."""

ITEM_FAILURE_REASON = "INVALID_ITEM"
"""``ItemFailure.reason`` of a batch item central refuses under these rules (the message names the field)."""


class MessageLike(Protocol):
    """One turn of a session, as any layer holds it (edge record, central record, protobuf message)."""

    @property
    def role(self) -> str:
        """Who spoke."""
        ...

    @property
    def content(self) -> str:
        """What was said."""
        ...

    @property
    def metadata(self) -> Any:
        """JSON object (a dict or a protobuf Struct)."""
        ...


# --- single values -------------------------------------------------------------------------------------


def _utf8_length(value: str, field: str) -> int:
    """Bytes of UTF-8; UNSTORABLE_VALUE for NUL and lone surrogates."""
    if "\x00" in value:
        raise InvalidArgument.for_field(
            field, "contains a NUL character, which central's database cannot store", reason="UNSTORABLE_VALUE"
        )
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument.for_field(
            field, "contains a lone surrogate, which is not valid UTF-8", reason="UNSTORABLE_VALUE"
        ) from None


def check_text(value: str, field: str, *, max_bytes: int = MAX_TEXT_BYTES) -> None:
    """Text central can store: no NUL, no lone surrogate, at most ``max_bytes`` of UTF-8."""
    if not isinstance(value, str):
        raise InvalidArgument.for_field(field, f"must be text, not {type(value).__name__}", reason="NOT_TEXT")
    size = _utf8_length(value, field)
    if size > max_bytes:
        raise InvalidArgument.for_field(
            field, f"is {size} bytes of UTF-8; at most {max_bytes} are allowed", reason="VALUE_TOO_LONG"
        )


def check_id(value: str, field: str) -> None:
    """An id (or owner name): text of at most ``MAX_ID_BYTES``."""
    check_text(value, field, max_bytes=MAX_ID_BYTES)


def check_floats(values: Iterable[float], field: str) -> None:
    """Every component finite (no NaN, no infinity)."""
    for index, value in enumerate(values):
        if not math.isfinite(value):
            raise InvalidArgument.for_field(
                f"{field}[{index}]", f"is {value!r}; only finite numbers can be stored", reason="NOT_FINITE"
            )


def check_embedding(values: Sequence[float], field: str) -> None:
    """Finite components, not all zero (an empty sequence, meaning "no embedding", passes)."""
    check_floats(values, field)
    if values and not any(values):
        raise InvalidArgument.for_field(
            field, "is the zero vector, which has no direction for cosine similarity", reason="ZERO_VECTOR"
        )


def check_epoch_seconds(seconds: int, field: str) -> None:
    """Seconds since the epoch within years 1-9999."""
    if not MIN_EPOCH_SECONDS <= seconds <= MAX_EPOCH_SECONDS:
        raise InvalidArgument.for_field(field, "must lie between years 1 and 9999", reason="INVALID_TIMESTAMP")


def check_epoch_nanos(nanos: int, field: str) -> None:
    """Nanoseconds since the epoch within years 1-9999 (0 means unset and passes)."""
    check_epoch_seconds(nanos // 1_000_000_000, field)


def check_json(value: Any, field: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
    """JSON data central can store: see the module docstring. ``None`` (absent) passes.

    The walk is iterative, so a hostile nesting depth costs no recursion; the
    size is that of the compact JSON encoding (UTF-8, every number counted as
    ``_NUMBER_BYTES``), counted on the way.
    """
    if value is None:
        return
    size = 0
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            size += _utf8_length(node, path) + 2
        elif isinstance(node, bool) or node is None:
            size += 5
        elif isinstance(node, int):
            size += _NUMBER_BYTES
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidArgument.for_field(path, f"is {node!r}; JSON numbers must be finite", reason="NOT_FINITE")
            size += _NUMBER_BYTES
        elif isinstance(node, Mapping) or (isinstance(node, Sequence) and not isinstance(node, bytes | bytearray)):
            if depth > max_depth:
                raise InvalidArgument.for_field(path, f"nests deeper than {max_depth} levels", reason="JSON_TOO_DEEP")
            if isinstance(node, Mapping):
                size += 2 + max(len(node) - 1, 0)
                for key in node:
                    if not isinstance(key, str):
                        raise InvalidArgument.for_field(
                            path, f"has a key of type {type(key).__name__}; JSON keys are text", reason="NOT_JSON"
                        )
                    child = f"{path}.{key}" if len(key) <= 64 else f"{path}.{key[:61]}..."
                    size += _utf8_length(key, child) + 3
                    stack.append((node[key], child, depth + 1))
            else:
                size += 2 + max(len(node) - 1, 0)
                stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(node))
        else:
            raise InvalidArgument.for_field(
                path, f"holds a {type(node).__name__}, which is not JSON data", reason="NOT_JSON"
            )
        if size > max_bytes:
            raise InvalidArgument.for_field(
                field, f"is more than {max_bytes} bytes encoded as JSON", reason="VALUE_TOO_LONG"
            )


# --- items, as the edge accepts them and central admits them --------------------------------------------


def _at(field: str, name: str) -> str:
    """``field.name``, or just ``name`` at the top level of a request (``field`` empty)."""
    return f"{field}.{name}" if field else name


def validate_decision(
    *, decision_id: str, principal: str, action: str, resource: str, metadata: Any = None, field: str = "decision"
) -> None:
    """A recorded authorization decision (the uids Cedar was asked about, and its metadata)."""
    check_id(decision_id, _at(field, "decision_id"))
    check_text(principal, _at(field, "principal"), max_bytes=MAX_PRINCIPAL_BYTES)
    check_text(action, _at(field, "action"), max_bytes=MAX_ACTION_BYTES)
    check_text(resource, _at(field, "resource"), max_bytes=MAX_RESOURCE_BYTES)
    check_json(metadata, _at(field, "metadata"))


def validate_authorization(*, principal: str, action: str, resource: str, context: Any = None) -> None:
    """An authorization request whose decision will be recorded (names are the request's fields).

    The edge keeps the request's context in the decision's metadata as
    ``{"context": context}``: the context may nest one level less, and must
    leave room for its key, for the decision to pass ``validate_decision``.
    """
    check_text(principal, "principal", max_bytes=MAX_PRINCIPAL_BYTES)
    check_text(action, "action", max_bytes=MAX_ACTION_BYTES)
    check_text(resource, "resource", max_bytes=MAX_RESOURCE_BYTES)
    check_json(context, "context", max_bytes=MAX_JSON_BYTES - 64, max_depth=MAX_JSON_DEPTH - 1)


def validate_episode(
    *,
    episode_id: str,
    session_id: str = "",
    content: str = "",
    embedding: Sequence[float] = (),
    metadata: Any = None,
    field: str = "episode",
) -> None:
    """One entry of episodic memory (the embedding's dimension is checked where it is known)."""
    check_id(episode_id, _at(field, "episode_id"))
    check_id(session_id, _at(field, "session_id"))
    check_text(content, _at(field, "content"))
    check_embedding(embedding, _at(field, "embedding"))
    check_json(metadata, _at(field, "metadata"))


def validate_vector(
    *, vector_id: str, values: Sequence[float] = (), region: str = "", payload: Any = None, field: str = "vector"
) -> None:
    """One vector (the dimension is checked where it is known)."""
    check_id(vector_id, _at(field, "vector_id"))
    check_embedding(values, _at(field, "values"))
    check_text(region, _at(field, "region"), max_bytes=MAX_NAME_BYTES)
    check_json(payload, _at(field, "payload"))


def validate_session_item(
    *,
    session_id: str,
    user_id: str = "",
    messages: Iterable[MessageLike] = (),
    state: Any = None,
    field: str = "session",
    state_field: str = "state",
) -> None:
    """A session, or the turns and state keys appended to one (pass the patch as ``state``).

    ``messages`` are objects with ``role``, ``content`` and ``metadata`` (and
    optionally ``message_id``): the edge's ``Message``, central's records or
    protobuf ``SessionMessage`` alike; ``metadata`` and ``state`` are JSON data
    or protobuf ``Struct``s. ``field`` prefixes the names in errors (empty: the
    request's top level), ``state_field`` names the state (``state_patch`` for
    an append).
    """
    check_id(session_id, _at(field, "session_id"))
    check_id(user_id, _at(field, "user_id"))
    for index, message in enumerate(messages):
        where = _at(field, f"messages[{index}]")
        check_id(getattr(message, "message_id", "") or "", f"{where}.message_id")
        check_text(message.role, f"{where}.role", max_bytes=MAX_NAME_BYTES)
        check_text(message.content, f"{where}.content")
        check_json(message.metadata or None, f"{where}.metadata")
    check_json(state, _at(field, state_field))


def problem_of(check: Callable[..., None], /, **arguments: Any) -> str | None:
    """Run ``check(**arguments)``; the message of the INVALID_ARGUMENT it raised (it names the field), or None.

    Central uses it to turn a refused item into an ``ItemFailure`` with
    ``ITEM_FAILURE_REASON`` instead of refusing its whole batch.
    """
    try:
        check(**arguments)
    except InvalidArgument as error:
        return error.message
    return None


__all__ = [
    "BTREE_MAX_ROW_BYTES",
    "ITEM_FAILURE_REASON",
    "MAX_ACTION_BYTES",
    "MAX_EPOCH_SECONDS",
    "MAX_ID_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PRINCIPAL_BYTES",
    "MAX_RESOURCE_BYTES",
    "MAX_TEXT_BYTES",
    "MIN_EPOCH_SECONDS",
    "MessageLike",
    "check_embedding",
    "check_epoch_nanos",
    "check_epoch_seconds",
    "check_floats",
    "check_id",
    "check_json",
    "check_text",
    "problem_of",
    "validate_authorization",
    "validate_decision",
    "validate_episode",
    "validate_session_item",
    "validate_vector",
]
