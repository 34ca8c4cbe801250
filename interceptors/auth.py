"""Authentication interceptor: turns a call's credential into an ``Identity``.

The interceptor and the development method ("none": the caller names itself
with the ``x-aeterna-agent-id`` and optional ``x-aeterna-tenant-id`` metadata
and gets every scope) live here; the real methods (apiKey, oauth2,
serviceAccount, mtls) are in ``interceptors.authenticators``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from grpc import aio

from aeterna_security.identity import Identity, reset_identity, set_identity
from aeterna_shared.errors import AeternaError, Unauthenticated
from interceptors.errors import abort
from interceptors.handlers import HookedInterceptor, PassThrough, UnaryCall

_log = logging.getLogger(__name__)

AGENT_ID_HEADER = "x-aeterna-agent-id"
TENANT_ID_HEADER = "x-aeterna-tenant-id"


class Authenticator(Protocol):
    """Maps call metadata (and the peer's TLS context) to an identity, or raises Unauthenticated.

    ``authenticate`` may be a coroutine (an ``async def``): authenticators that
    fetch keys or ask another service do so without blocking the event loop.
    """

    def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]
    ) -> Identity | Awaitable[Identity]:
        """Return (or resolve to) the caller's identity, or raise ``Unauthenticated`` (``Unavailable``)."""
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


IdentityCheck = Callable[[Identity, dict[str, Any]], None]
"""A check run after authentication (for example client-certificate pins); raises a domain error."""

FailureHook = Callable[[str, str], None]
"""Called with (method, reason) when a call is refused, for metrics."""


class _AuthHooks(PassThrough):
    def __init__(
        self, authenticator: Authenticator, checks: Sequence[IdentityCheck], on_failure: FailureHook | None
    ) -> None:
        self._authenticator = authenticator
        self._checks = tuple(checks)
        self._on_failure = on_failure

    async def _identify(self, method: str, context: aio.ServicerContext[Any, Any]) -> Identity:
        metadata = tuple(context.invocation_metadata() or ())
        auth_context = dict(context.auth_context())
        try:
            found = self._authenticator.authenticate(metadata, auth_context)
            identity = await found if inspect.isawaitable(found) else found
            for check in self._checks:
                check(identity, auth_context)
        except AeternaError as error:
            if self._on_failure is not None:
                self._on_failure(method, error.reason)
            await abort(context, error)
        except Exception:
            # A broken credential store (say an unreadable JWKS) must not leak
            # its details to the caller; it is logged and the call refused.
            _log.exception("authenticator failed in %s", method)
            if self._on_failure is not None:
                self._on_failure(method, "AUTHENTICATOR_ERROR")
            await abort(context, Unauthenticated("authentication is unavailable", reason="AUTHENTICATOR_ERROR"))
        return identity

    async def unary(self, method: str, context: aio.ServicerContext[Any, Any], call: UnaryCall) -> Any:
        token = set_identity(await self._identify(method, context))
        try:
            return await call()
        finally:
            reset_identity(token)

    async def stream(
        self, method: str, context: aio.ServicerContext[Any, Any], responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        token = set_identity(await self._identify(method, context))
        try:
            async for item in responses:
                yield item
        finally:
            # A generator closed from another context cannot reset its token;
            # the call's context dies with it, so there is nothing to undo.
            with contextlib.suppress(ValueError):
                reset_identity(token)


class AuthInterceptor(HookedInterceptor):
    """Authenticates every call except health and reflection.

    ``checks`` run after the authenticator (client-certificate pins, for one);
    ``on_failure`` sees the reason of every refusal (the auth-failure metric).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        checks: Sequence[IdentityCheck] = (),
        on_failure: FailureHook | None = None,
    ) -> None:
        super().__init__(_AuthHooks(authenticator, checks, on_failure))
