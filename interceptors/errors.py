"""Domain errors to gRPC status, in one table, with ``google.rpc`` rich details.

Clients read the details back with ``grpc_status.rpc_status.from_call``. An
exception that is not an ``AeternaError`` becomes INTERNAL with a fixed
message: internals and secrets never leave the process (they are logged).

No driver appears here: each store adapter maps its library's errors to the
domain tree itself (a lost Redis connection is ``Unavailable``/``CACHE_UNAVAILABLE``
in ``edge_svc.store.cache``, an unwritable outbox ``Unavailable``/``OUTBOX_UNAVAILABLE``
in ``edge_svc.store.outbox``), so a driver exception that reaches this table is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

from aeterna_shared.errors import (
    ERROR_DOMAIN,
    Aborted,
    AeternaError,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from interceptors.handlers import CallEnded, PassThrough, UnaryCall, wrap_handler

_log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# The one mapping from the domain tree to gRPC codes. Order matters: the first
# matching class wins, so subclasses come before their bases.
_CODES: tuple[tuple[type[AeternaError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Aborted, grpc.StatusCode.ABORTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)

INTERNAL_MESSAGE = "internal error; the server logged the details"


def code_for(error: AeternaError) -> grpc.StatusCode:
    """The gRPC code of a domain error (INTERNAL for the bare base class)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status_proto(error: AeternaError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for a domain error, details included."""
    code = code_for(error)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.message)
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted | Unavailable):
        details.append(_pack(_retry_info(error.retry_after)))
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def internal_status() -> status_pb2.Status:
    """The status sent for an unexpected exception: no internals."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=INTERNAL_MESSAGE,
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
    )


async def abort(context: aio.ServicerContext[Any, Any], error: AeternaError) -> NoReturn:
    """End the call with the domain error's status and details, from an interceptor's hook.

    The status is set on the context and ``CallEnded`` raised; the wrapper of the
    calling interceptor (``interceptors.handlers.wrap_handler``) ends the call
    there. Not grpc's ``context.abort``: see ``CallEnded`` and ``_finish``.
    """
    _finish(context, code_for(error), to_status_proto(error))
    raise CallEnded(error.message)


def _status_for(method: str, error: BaseException) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The code and rich status for an exception a servicer raised (logged when it is not a domain error)."""
    if isinstance(error, AeternaError):
        return code_for(error), to_status_proto(error)
    _log.exception("unexpected error in %s", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, internal_status()


def _finish(context: aio.ServicerContext[Any, Any], code: grpc.StatusCode, status: status_pb2.Status) -> None:
    """End the call with ``status`` by setting it, not by ``context.abort``.

    ``abort`` raises an ``AbortError`` that grpc keeps in the call's state, and
    whose traceback holds every frame it passes, each holding the context that
    holds the call's state: a reference cycle that keeps the failed call's
    frames, request batches included, alive until the cyclic garbage collector's
    next full run. Central under a stream of refused multi-megabyte batches grew
    by hundreds of MiB a minute that way. A status that is set ends the call the
    same way for the client, and everything is freed when the call returns.
    """
    context.set_code(code)
    context.set_details(status.message)
    context.set_trailing_metadata(((STATUS_DETAILS_KEY, status.SerializeToString()),))


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises an internal exception that must pass through untouched, as does ours.
    return type(error).__name__ == "AbortError" or isinstance(error, aio.AbortError | CallEnded)


class _ErrorHooks(PassThrough):
    # The status is set after the ``except`` block: inside it, the exception (and
    # through its traceback every frame of the failed call) would still be referenced.
    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        try:
            return await call()
        except Exception as error:
            if _is_abort(error):
                raise
            code, status = _status_for(method, error)
        _finish(context, code, status)
        return None

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in responses:
                yield item
            return
        except Exception as error:
            if _is_abort(error):
                raise
            code, status = _status_for(method, error)
        _finish(context, code, status)


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Turns domain errors raised by servicers into rich gRPC statuses.

    Place it innermost (last) in the chain, so that errors raised by the other
    interceptors' hooks are mapped too when they use ``abort`` themselves.
    """

    def __init__(self) -> None:
        self._hooks = _ErrorHooks()

    async def intercept_service(
        self,
        continuation: Any,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return wrap_handler(handler, handler_call_details.method, self._hooks)
