"""Checks on protobuf values that the runtime accepts but our stores cannot hold.

``google.protobuf.Timestamp`` allows any seconds/nanos on the wire, while its
conversions (and PostgreSQL) only handle years 1-9999 and nanos in [0, 1e9).
A request carrying such a value is malformed: INVALID_ARGUMENT naming the
field, never INTERNAL from deep inside a conversion.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from aeterna_shared.errors import InvalidArgument
from aeterna_shared.limits import MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS

# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range the Timestamp spec allows
# (one definition, in ``aeterna_shared.limits``, with the rest of what central can store).
MIN_SECONDS = MIN_EPOCH_SECONDS
MAX_SECONDS = MAX_EPOCH_SECONDS


def check_timestamp(stamp: timestamp_pb2.Timestamp, field: str) -> None:
    """Raise INVALID_ARGUMENT unless ``stamp`` is a valid Timestamp."""
    if not MIN_SECONDS <= stamp.seconds <= MAX_SECONDS:
        raise InvalidArgument.for_field(field, "must lie between years 1 and 9999", reason="INVALID_TIMESTAMP")
    if not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidArgument.for_field(field, "nanos must be between 0 and 999,999,999", reason="INVALID_TIMESTAMP")


def json_of(message: Message, field: str) -> Any:
    """A Struct/Value as plain JSON data; INVALID_ARGUMENT when it has no JSON form.

    NaN and infinities are valid doubles in a ``Value`` but not JSON numbers,
    and a hostile client can nest structures deeper than the converter recurses.
    """
    try:
        return json_format.MessageToDict(message)
    except (ValueError, RecursionError):
        raise InvalidArgument.for_field(
            field, "is not representable as JSON (NaN/Infinity, or nested too deeply)", reason="NOT_JSON"
        ) from None
