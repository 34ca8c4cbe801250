"""Authentication interceptor: turns a call's credential into an ``Identity``.

Only the development method ("none") is implemented here so far: the caller
names itself with the ``x-aeterna-agent-id`` (and optional
``x-aeterna-tenant-id``) metadata and gets every scope. Real methods (apiKey,
oauth2, serviceAccount, mTLS pinning) plug in as ``Authenticator``s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc
from grpc import aio

from aeterna_shared.errors import AeternaError
from interceptors.errors import abort
from interceptors.handlers import PassThrough, UnaryCall, wrap_handler
from interceptors.identity import Identity, reset_identity, set_identity

AGENT_ID_HEADER = "x-aeterna-agent-id"
TENANT_ID_HEADER = "x-aeterna-tenant-id"

# Health and reflection answer without credentials so probes and grpcurl work.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Authenticator(Protocol):
    """Maps call metadata (and the peer's TLS context) to an identity, or raises Unauthenticated."""

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        """Return the caller's identity or raise ``Unauthenticated``."""
        ...


class DevelopmentAuthenticator:
    """Auth method "none": trusts the caller's self-declared agent id. Development only."""

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        values = {key: value for key, value in metadata if isinstance(value, str)}
        return Identity(
            agent_id=values.get(AGENT_ID_HEADER, ""),
            tenant_id=values.get(TENANT_ID_HEADER, "default") or "default",
            scopes=frozenset({"*"}),
            method="none",
        )


class _AuthHooks(PassThrough):
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def _identify(self, context: aio.ServicerContext[Any, Any]) -> Identity:
        metadata = tuple(context.invocation_metadata() or ())
        return self._authenticator.authenticate(metadata, dict(context.auth_context()))

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        try:
            identity = self._identify(context)
        except AeternaError as error:
            await abort(context, error)
        token = set_identity(identity)
        try:
            return await call()
        finally:
            reset_identity(token)

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        try:
            identity = self._identify(context)
        except AeternaError as error:
            await abort(context, error)
        token = set_identity(identity)
        try:
            async for item in responses:
                yield item
        finally:
            reset_identity(token)


class AuthInterceptor(aio.ServerInterceptor):
    """Authenticates every call except health and reflection."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._hooks = _AuthHooks(authenticator)

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(PUBLIC_PREFIXES):
            return handler
        return wrap_handler(handler, method, self._hooks)
