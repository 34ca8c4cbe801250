"""Client channels to a central, for the operator commands (one place, so real auth can be swapped in)."""

from __future__ import annotations

from grpc import aio

from interceptors.auth import AGENT_ID_HEADER, TENANT_ID_HEADER


def open_channel(target: str) -> aio.Channel:
    """A plaintext channel to ``host:port`` (development; TLS and credentials come with the auth work)."""
    return aio.insecure_channel(target)


def call_metadata(agent_id: str = "operator", tenant_id: str = "default") -> tuple[tuple[str, str], ...]:
    """Development-auth metadata naming the caller."""
    return ((AGENT_ID_HEADER, agent_id), (TENANT_ID_HEADER, tenant_id))
