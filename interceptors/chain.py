"""The interceptor chains both services use, built from configuration in one place.

Order matters: the first listed is outermost. Authentication runs first so
that everything after it (rate limits, servicers) sees an identity; error
mapping is innermost so that domain errors from servicers become rich statuses.
"""

from __future__ import annotations

from typing import Literal

from grpc import aio

from aeterna_shared.config import AeternaConfig
from interceptors.auth import AuthInterceptor, DevelopmentAuthenticator
from interceptors.errors import ErrorMappingInterceptor

Role = Literal["central", "edge"]


def server_interceptors(config: AeternaConfig, *, role: Role) -> list[aio.ServerInterceptor]:
    """The server-side chain for ``role``."""
    return [AuthInterceptor(DevelopmentAuthenticator()), ErrorMappingInterceptor()]
