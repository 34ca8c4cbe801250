"""One way to wrap any gRPC aio method handler, whatever its RPC shape.

Every server interceptor here needs to run code around the servicer for all
four shapes (unary/stream in, unary/stream out) while keeping the handler's
serializers. ``wrap_handler`` does that once: the caller supplies an async
``around`` hook that receives the method name, the context, and a thunk that
runs the servicer; for streamed responses the hook wraps an async iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from aeterna_shared.errors import InvalidArgument

UnaryCall = Callable[[], Awaitable[Any]]

_UNDECODABLE_MESSAGE = "the request message is not a valid protobuf encoding of the method's request type"


class _Undecodable:
    """Stands for a request frame that did not decode; the outermost wrapper answers INVALID_ARGUMENT.

    Without this, grpc answers a frame its deserializer cannot parse with UNKNOWN (or INTERNAL).
    """


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


class CallEnded(Exception):
    """The call's final status is set: the wrapper of the interceptor whose hook raised this ends the call.

    ``interceptors.errors.abort`` raises it instead of grpc's ``context.abort``,
    whose ``AbortError`` grpc keeps in the call's state while its traceback holds
    every frame it crossed, each holding the context that holds that state: a
    reference cycle that keeps a refused call's frames — and the request in
    them, megabytes for a sync batch — alive until a full garbage collection.
    This exception is caught one frame up and dropped, so nothing stays.
    """


def _reject_undecodable(context: aio.ServicerContext[Any, Any]) -> None:
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(_UNDECODABLE_MESSAGE)


async def _checked(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            # Raised inside the servicer's iteration: the error mapping turns it into INVALID_ARGUMENT.
            raise InvalidArgument(_UNDECODABLE_MESSAGE, reason="MALFORMED_MESSAGE")
        yield request


class Around(Protocol):
    """Hooks run around each call; implementers override what they need."""

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        """Run around a call that returns one response."""
        ...

    def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """Wrap the iterator of a call that streams responses."""
        ...

    def requests(
        self, method: str, context: aio.ServicerContext[Any, Any], requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """Wrap the iterator of incoming stream messages (client and bidi streams)."""
        ...


async def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    """Iterate whatever a streaming behaviour returned: an async or sync iterator, or a
    coroutine (a servicer that writes with ``context.write`` and returns None)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
        return
    if hasattr(result, "__await__"):
        result = await result
    for item in result or ():
        yield item


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any] | None, method: str, hooks: Around
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """Return a handler that runs ``hooks`` around ``handler``'s behaviour."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            if request is _UNDECODABLE:
                _reject_undecodable(context)
                return None
            try:
                return await hooks.unary(method, context, lambda: inner_uu(request, context))
            except CallEnded:
                return None

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        # grpc.aio treats a streaming behaviour as asynchronous only when it is an
        # async generator function; a plain function returning an async iterator
        # would be iterated synchronously and fail.
        async def unary_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                _reject_undecodable(context)
                return
            try:
                async for item in hooks.stream(method, context, _as_async_iter(inner_us(request, context))):
                    yield item
            except CallEnded:
                return

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            wrapped = hooks.requests(method, context, _checked(requests, context))
            try:
                return await hooks.unary(method, context, lambda: inner_su(wrapped, context))
            except CallEnded:
                return None

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    inner_ss: Any = handler.stream_stream

    async def stream_stream(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        wrapped = hooks.requests(method, context, _checked(requests, context))
        try:
            async for item in hooks.stream(method, context, _as_async_iter(inner_ss(wrapped, context))):
                yield item
        except CallEnded:
            return

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, _tolerant(handler.request_deserializer), handler.response_serializer
    )


class PassThrough:
    """An ``Around`` that does nothing; interceptors subclass it and override one hook."""

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        return await call()

    def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        return responses

    def requests(
        self, method: str, context: aio.ServicerContext[Any, Any], requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        return requests


# Health and reflection answer without credentials, limits or accounting, so
# that probes and grpcurl work and never count against anyone's quota.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class HookedInterceptor(aio.ServerInterceptor):
    """A server interceptor that runs ``hooks`` around every call except health and reflection."""

    def __init__(self, hooks: Around) -> None:
        self._hooks = hooks

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(PUBLIC_PREFIXES):
            return handler
        return wrap_handler(handler, method, self._hooks)
