"""The domain error tree. Services raise these; ``interceptors.errors`` maps them,
in one table, to gRPC status codes with ``google.rpc`` details.

    AeternaError                      (base; never raised itself)
    ├── InvalidArgument               INVALID_ARGUMENT  + BadRequest field violations
    ├── NotFound                      NOT_FOUND
    ├── AlreadyExists                 ALREADY_EXISTS    (e.g. a batch id reused with other content)
    ├── Unauthenticated               UNAUTHENTICATED   (credential, signature or freshness)
    ├── PermissionDenied              PERMISSION_DENIED (identity may not touch this data)
    ├── ResourceExhausted             RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo
    ├── Aborted                       ABORTED           (optimistic-concurrency conflict)
    ├── FailedPrecondition            FAILED_PRECONDITION
    └── Unavailable                   UNAVAILABLE       + RetryInfo (central unreachable, offline)

Each error carries a machine-readable ``reason`` (UPPER_SNAKE_CASE, stable: the
same reason always means the same thing), a human message that never contains
secrets, and string metadata for ``ErrorInfo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ERROR_DOMAIN = "aeterna.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, for ``google.rpc.BadRequest``."""

    field: str
    description: str


class AeternaError(Exception):
    """Base of every error the services raise on purpose."""

    reason: str = "UNSPECIFIED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(AeternaError):
    """The request is malformed; nothing was changed."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = violations

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """An error about one field, with the field named in the message and the details."""
        return cls(f"{field}: {description}", reason=reason, violations=(FieldViolation(field, description),))


class _RetryLater(AeternaError):
    """Shared by the errors that tell the caller when to try again (``RetryInfo``); not raised itself."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class NotFound(AeternaError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    reason = "NOT_FOUND"


class AlreadyExists(AeternaError):
    """An id is already taken by something different."""

    reason = "ALREADY_EXISTS"


class Unauthenticated(AeternaError):
    """The caller, or the batch signature, could not be authenticated."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(AeternaError):
    """The caller is authenticated but may not do this."""

    reason = "PERMISSION_DENIED"


class ResourceExhausted(_RetryLater):
    """A quota or limit was hit; ``retry_after`` says when to try again."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float = 1.0,
        subject: str = "",
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_after=retry_after)
        self.subject = subject


class Aborted(AeternaError):
    """A concurrent change won; re-read and retry."""

    reason = "ABORTED"


class FailedPrecondition(AeternaError):
    """The system is not in a state that allows this request."""

    reason = "FAILED_PRECONDITION"


class Unavailable(_RetryLater):
    """A dependency (usually central) cannot be reached now; retry later (``retry_after`` seconds)."""

    reason = "UNAVAILABLE"


__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AeternaError",
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]
