"""``aeterna_shared.limits``: the one definition of what central can store (pure logic; the real
PostgreSQL side of it is in ``tests/central/test_poison_items.py``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from aeterna_shared import limits
from aeterna_shared.errors import InvalidArgument
from edge_svc.records import Message

MIGRATIONS = Path(__file__).resolve().parents[2] / "central_svc" / "store" / "migrations" / "versions"


def refused(check: Callable[..., object], *args: object, **kwargs: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        check(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\x00b", "UNSTORABLE_VALUE"),
        ("lone \ud800 surrogate", "UNSTORABLE_VALUE"),
        ("x" * (limits.MAX_ID_BYTES + 1), "VALUE_TOO_LONG"),
        # Bytes, not characters: 100 four-byte characters are 400 bytes of UTF-8.
        ("😀" * 100, "VALUE_TOO_LONG"),
    ],
)
def test_ids_refuse_what_postgresql_text_cannot_hold(value: str, reason: str) -> None:
    error = refused(limits.check_id, value, "decision.decision_id")
    assert error.reason == reason
    assert error.violations[0].field == "decision.decision_id"
    assert error.message.startswith("decision.decision_id: ")


def test_values_at_the_limit_pass_and_one_byte_more_is_refused() -> None:
    """What a caller sees at the boundary: accepted (no refusal), then one byte more refused naming the field."""
    at_limit_id = "😀" * (limits.MAX_ID_BYTES // 4)
    at_limit_text = "é" * (limits.MAX_RESOURCE_BYTES // 2)
    assert limits.problem_of(limits.check_id, value=at_limit_id, field="id") is None
    text_limit = limits.MAX_RESOURCE_BYTES
    assert limits.problem_of(limits.check_text, value=at_limit_text, field="resource", max_bytes=text_limit) is None
    assert refused(limits.check_id, at_limit_id + "x", "id").reason == "VALUE_TOO_LONG"
    over = refused(limits.check_text, at_limit_text + "x", "resource", max_bytes=text_limit)
    assert over.reason == "VALUE_TOO_LONG"
    assert over.violations[0].field == "resource"


def _index_columns() -> list[tuple[str, list[str]]]:
    """(index, text columns) of every B-tree index and primary key on a text column in the migrations."""
    source = "\n".join(path.read_text() for path in sorted(MIGRATIONS.glob("*.py")))
    found = [
        (name, [c.strip() for c in columns.split(",")])
        for name, columns in re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+) ON \w+ \(([^)]*)\)", source)
    ]
    found += [
        (f"pk({columns})", [c.strip() for c in columns.split(",")])
        for columns in re.findall(r"PRIMARY KEY \(([^)]*)\)", source)
    ]
    return found


# The widest value each indexed text column can hold under the limits (8 bytes for times, numbers, uuids).
_COLUMN_BYTES = {
    "resource": limits.MAX_RESOURCE_BYTES,
    "region": limits.MAX_NAME_BYTES,
}


def test_limits_fit_every_index() -> None:
    """Every index row stays under PostgreSQL's B-tree maximum even with incompressible values at the limits."""
    indexes = _index_columns()
    assert any(name == "decisions_effective" for name, _ in indexes)
    for name, columns in indexes:
        widths = [
            _COLUMN_BYTES.get(c, limits.MAX_ID_BYTES if c.endswith("_id") else 8) + 4  # varlena header
            for c in columns
            if "USING" not in c
        ]
        row = 8 + sum(widths) + 8 * len(widths)  # index tuple header, alignment padding per column
        assert row <= limits.BTREE_MAX_ROW_BYTES, f"{name} {columns}: {row} bytes"


def test_json_is_walked_without_recursion_and_measured() -> None:
    deep: object = {"leaf": 1}
    for _ in range(5000):  # far deeper than Python's recursion limit
        deep = {"n": deep}
    assert refused(limits.check_json, deep, "metadata").reason == "JSON_TOO_DEEP"
    assert refused(limits.check_json, {"k": math.nan}, "metadata").violations[0].field == "metadata.k"
    assert refused(limits.check_json, {"k": [1, "a\x00"]}, "metadata").violations[0].field == "metadata.k[1]"
    assert refused(limits.check_json, {"a\x00": 1}, "state").reason == "UNSTORABLE_VALUE"
    assert refused(limits.check_json, {"k": b"bytes"}, "payload").reason == "NOT_JSON"
    big = {"k": "x" * limits.MAX_JSON_BYTES}
    assert refused(limits.check_json, big, "payload").reason == "VALUE_TOO_LONG"
    assert limits.problem_of(limits.check_json, value={"list": [1, 2.5, True, None, {"x": "y"}]}, field="ok") is None
    assert limits.problem_of(limits.check_json, value=None, field="absent") is None


def test_a_protobuf_struct_measures_like_the_dict_it_came_from() -> None:
    """The edge checks dicts, central checks Structs: the same document must get the same answer."""
    document: dict[str, Any] = {"n": 1, "f": 2.0, "s": "é" * 10, "l": [1, {"k": True}], "z": None}
    struct = struct_pb2.Struct()
    struct.update(document)
    for size in range(100, 200):
        dict_ok = limits.problem_of(limits.check_json, value=document, field="m", max_bytes=size) is None
        struct_ok = limits.problem_of(limits.check_json, value=struct, field="m", max_bytes=size) is None
        assert dict_ok == struct_ok, size
    nan = struct_pb2.Struct()
    nan.update({"x": {"y": math.inf}})
    assert refused(limits.check_json, nan, "metadata").violations[0].field == "metadata.x.y"


def test_embeddings_are_finite_and_have_a_direction() -> None:
    assert refused(limits.check_embedding, [0.0, math.nan], "values").violations[0].field == "values[1]"
    assert refused(limits.check_embedding, [0.0, 0.0], "values").reason == "ZERO_VECTOR"
    limits.check_embedding([], "values")  # no embedding at all is fine
    limits.check_embedding([0.0, 1.0], "values")


def test_session_items_name_the_field_of_the_bad_turn() -> None:
    messages = [Message("user", "fine"), Message("user", "bad\x00")]
    error = refused(limits.validate_session_item, session_id="s", messages=messages)
    assert error.violations[0].field == "session.messages[1].content"
    error = refused(
        limits.validate_session_item, session_id="s", state={"k": math.nan}, field="", state_field="state_patch"
    )
    assert error.violations[0].field == "state_patch.k"
    limits.validate_session_item(session_id="s", user_id="u", messages=messages[:1], state={"k": 1})


def test_an_authorization_context_leaves_room_for_its_place_in_the_decision() -> None:
    """The edge keeps the context as the decision's ``metadata.context``: what it accepts, central accepts."""
    context: object = {"leaf": 1}
    for _ in range(limits.MAX_JSON_DEPTH - 2):
        context = {"n": context}
    limits.validate_authorization(principal='User::"a"', action='Action::"r"', resource='Doc::"d"', context=context)
    limits.validate_decision(
        decision_id="d", principal='User::"a"', action='Action::"r"', resource='Doc::"d"', metadata={"context": context}
    )
    deeper = {"n": context}
    assert (
        refused(
            limits.validate_authorization,
            principal='User::"a"',
            action='Action::"r"',
            resource='Doc::"d"',
            context=deeper,
        ).reason
        == "JSON_TOO_DEEP"
    )
    resource = 'Doc::"' + "x" * 6000 + '"'
    error = refused(limits.validate_authorization, principal='User::"a"', action='Action::"r"', resource=resource)
    assert (error.reason, error.violations[0].field) == ("VALUE_TOO_LONG", "resource")


def test_problem_of_turns_a_refusal_into_an_item_failure_message() -> None:
    message = limits.problem_of(
        limits.validate_decision,
        decision_id="d1",
        principal='User::"a"',
        action='Action::"r"',
        resource="Doc::\x00",
        field="decisions[3]",
    )
    assert message is not None
    assert message.startswith("decisions[3].resource: ")
    assert limits.problem_of(limits.check_id, value="fine", field="x") is None
