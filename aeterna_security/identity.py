"""Who is calling: set by the auth interceptor, read by servicers.

The identity always comes from the credential (API key, JWT, service-account
token, or a pinned client certificate), never from a payload field. Servicers
call ``current_identity()`` and compare it with what the payload claims.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from aeterna_shared.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    agent_id: str
    """Edge agent id (or the subject of an operator/agent credential)."""
    tenant_id: str = "default"
    """Tenant whose data the caller may touch."""
    region: str = ""
    """Region the credential is bound to, when it is."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """Granted scopes, for example "sync", "admin", "agent"."""
    method: str = "none"
    """How the caller was authenticated: apiKey, oauth2, serviceAccount, mtls, none."""

    def require_scope(self, scope: str) -> None:
        """Raise PERMISSION_DENIED unless the identity holds ``scope``."""
        if scope not in self.scopes and "*" not in self.scopes:
            raise PermissionDenied(
                f"{self.agent_id} lacks the {scope!r} scope",
                reason="MISSING_SCOPE",
                metadata={"scope": scope},
            )

    def require_agent(self, claimed_agent_id: str) -> None:
        """Raise PERMISSION_DENIED when a payload claims to be another agent."""
        if claimed_agent_id and claimed_agent_id != self.agent_id:
            raise PermissionDenied(
                f"credential of {self.agent_id!r} cannot act for agent {claimed_agent_id!r}",
                reason="AGENT_MISMATCH",
                metadata={"claimed_agent_id": claimed_agent_id},
            )


# The development identity used when auth is "none": every scope, the default tenant.
ANONYMOUS = Identity(agent_id="", scopes=frozenset({"*"}), method="none")

_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("aeterna_identity", default=None)


def current_identity() -> Identity:
    """The identity of the call being served; UNAUTHENTICATED when there is none."""
    identity = _current.get()
    if identity is None:
        raise Unauthenticated("no authenticated identity for this call", reason="NO_IDENTITY")
    return identity


def peek_identity() -> Identity | None:
    """The identity of the call being served, or None (for interceptors that also serve anonymous calls)."""
    return _current.get()


def set_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    """Bind ``identity`` to the current call (the auth interceptor does this)."""
    return _current.set(identity)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    """Undo ``set_identity``."""
    _current.reset(token)
