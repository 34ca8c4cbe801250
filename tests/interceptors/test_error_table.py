"""The one error table maps the domain tree only: store drivers are mapped at their adapters."""

from __future__ import annotations

import re
import types
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from aeterna_shared.errors import ERROR_DOMAIN, ResourceExhausted, Unavailable
from interceptors import errors

DRIVERS = {"redis", "sqlite3", "psycopg", "psycopg_pool"}


def test_the_error_table_imports_no_driver() -> None:
    # Read as text, not with ``ast``: CPython 3.11.7's ast.parse can fail spuriously after deep recursion
    # elsewhere in the session (gh-106905).
    source = Path(errors.__file__).read_text(encoding="utf-8")
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, flags=re.MULTILINE)
    assert imports, "no import found: the pattern is wrong"
    assert not {name.split(".")[0] for name in imports} & DRIVERS
    held = {value.__name__.split(".")[0] for value in vars(errors).values() if isinstance(value, types.ModuleType)}
    assert not held & DRIVERS


def test_store_errors_from_the_adapters_keep_their_status_and_details() -> None:
    cases = (
        (Unavailable("cache down", reason="CACHE_UNAVAILABLE"), grpc.StatusCode.UNAVAILABLE),
        (Unavailable("outbox locked", reason="OUTBOX_UNAVAILABLE"), grpc.StatusCode.UNAVAILABLE),
        (
            ResourceExhausted("full", reason="SESSION_STORE_FULL", retry_after=5.0, subject="cache"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    )
    for error, code in cases:
        assert errors.code_for(error) == code
        status = errors.to_status_proto(error)
        assert (status.code, status.message) == (code.value[0], error.message)
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, info.domain) == (error.reason, ERROR_DOMAIN)
        assert status.details[-1].Unpack(retry)
        assert retry.retry_delay.ToNanoseconds() == int(error.retry_after * 1e9)
