"""Durations and byte sizes written the way the spec writes them ("60s", "1Gi")."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|K|Ki|KB|M|Mi|MB|G|Gi|GB|T|Ti|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_duration(value: object) -> timedelta:
    """Read "500ms", "5s", "30m", "1h", "1d", a bare number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration, such as 5s or 1h, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"a duration such as 500ms, 5s, 30m, 1h or 1d, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


def parse_byte_size(value: object) -> int:
    """Read "10MB", "1Gi", "512Ki" or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, such as 10MB or 1Gi, not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError(f"a size such as 10485760, 10MB or 1Gi, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(value: timedelta) -> str:
    """Write a duration back in the spec's style, for docs and rendered config."""
    seconds = value.total_seconds()
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration field: accepts the spec's strings, serializes back to them."""

ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""A size in bytes: accepts "10MB", "1Gi" and plain integers."""
