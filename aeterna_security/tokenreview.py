"""Kubernetes service-account tokens checked by the API server itself (TokenReview).

``sync.auth.serviceAccount.verification: tokenReview``. Verifying a projected
token against the cluster issuer's JWKS (the default, ``jwks``) proves that the
cluster signed it, but not that the pod, service account or secret it is bound
to still exists; the API server knows that, and it is how Kubernetes components
(the kubelet, webhook authenticators, kube-rbac-proxy) check tokens. This is a
small client of that API, beside the other trust material in
``aeterna_security`` (it knows nothing of gRPC):

* ``POST <url>/apis/authentication.k8s.io/v1/tokenreviews`` with
  ``spec.token`` and ``spec.audiences`` (default ``[sync.auth.jwt.audience]``),
  authenticated with central's own service-account token (``tokenFile``, read
  at each review because the kubelet rotates it; its account needs the
  ``system:auth-delegator`` ClusterRole, which the chart binds), over TLS
  verified with ``caFile``;
* ``status.authenticated: true`` gives ``status.user.username``
  (``system:serviceaccount:<ns>:<name>``), which the authenticator maps through
  ``serviceAccount.subjects``. ``status.audiences`` must contain an expected
  audience: the API documents an empty list as "valid for the API server's own
  audience", which is not ours, so that is refused too (``WRONG_AUDIENCE``);
* ``status.authenticated: false`` is ``UNAUTHENTICATED / TOKEN_REVIEW_REFUSED``
  with the API server's ``status.error`` in the message (the token never is);
* the API server unreachable, or answering an error status (including 401/403,
  which means central's own account may not create reviews), is
  ``UNAVAILABLE / TOKEN_REVIEW_UNAVAILABLE``: the caller's credential was not
  judged, so the caller should retry, not give up; details are logged.

Accepted tokens are cached for ``tokenReview.cacheTtl`` (never beyond the
token's own ``exp``) under the SHA-256 of the token, never the token. Refusals
are not cached. Concurrent calls with one token share one review. A bearer
that is not even a JWT (every service-account token is one) is refused without
a request, so garbage cannot make central flood the API server.

The request runs in a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from aeterna_security.https_json import FetchError, HttpsJson, tls_context
from aeterna_shared.config.model import TokenReviewSettings
from aeterna_shared.errors import Unauthenticated, Unavailable

_log = logging.getLogger(__name__)

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - an API path
MAX_CACHED = 10_000
"""Accepted tokens kept at most (the oldest go first)."""
MAX_ERROR_CHARS = 300


def token_digest(token: str) -> str:
    """The cache key of a token: its hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Accepted:
    username: str
    until: float


class TokenReviewer:
    """Asks the Kubernetes API server whether a token is valid, and for whom; caches the yes."""

    def __init__(
        self,
        settings: TokenReviewSettings,
        audiences: Sequence[str],
        client: HttpsJson,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = settings.url.rstrip("/") + TOKEN_REVIEW_PATH
        self._token_file = Path(settings.token_file)
        self._audiences = tuple(audiences)
        self._cache_ttl = settings.cache_ttl.total_seconds()
        self._client = client
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: dict[str, _Accepted] = {}
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.requests = 0
        """How many reviews were posted (observability and tests)."""

    @classmethod
    def from_config(cls, settings: TokenReviewSettings, default_audience: str) -> TokenReviewer:
        """From ``sync.auth.serviceAccount.tokenReview``; ``default_audience`` is ``sync.auth.jwt.audience``."""
        context = tls_context(settings.ca_file, "sync.auth.serviceAccount.tokenReview.caFile")
        audiences = settings.audiences or (default_audience,)
        return cls(settings, audiences, HttpsJson(context, timeout=settings.timeout.total_seconds()))

    async def username(self, token: str) -> str:
        """The reviewed user name of ``token``; ``Unauthenticated`` or ``Unavailable`` otherwise."""
        key = token_digest(token)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.until:
            return cached.username
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise Unauthenticated(
                "the token is not a service-account token (not a JWT)", reason="INVALID_TOKEN"
            ) from None
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._review, token))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        status = await asyncio.shield(pending)
        username = self._judge(status, token)
        self._remember(key, username, claims.get("exp"))
        return username

    def _settled(self, key: str, done: asyncio.Future[dict[str, Any]]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, so a review whose callers all left is not reported as lost

    def _remember(self, key: str, username: str, exp: Any) -> None:
        if self._cache_ttl <= 0:
            return
        now = self._clock()
        until = now + self._cache_ttl
        if isinstance(exp, int | float):
            until = min(until, now + (float(exp) - self._wall_clock()))
        if until <= now:
            return
        if len(self._cache) >= MAX_CACHED:
            for stale in [k for k, v in self._cache.items() if v.until <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = _Accepted(username, until)

    def _judge(self, status: dict[str, Any], token: str) -> str:
        if status.get("authenticated") is not True:
            error = str(status.get("error") or "no reason given").replace(token, "<token>")[:MAX_ERROR_CHARS]
            raise Unauthenticated(
                f"the Kubernetes API server refused the token: {error}",
                reason="TOKEN_REVIEW_REFUSED",
                metadata={"review_error": error},
            )
        audiences = status.get("audiences") or []
        if not isinstance(audiences, list) or not set(self._audiences) & {str(a) for a in audiences}:
            raise Unauthenticated(
                f"the token is not bound to this audience ({', '.join(self._audiences)})", reason="WRONG_AUDIENCE"
            )
        user = status.get("user")
        username = user.get("username") if isinstance(user, dict) else None
        if not isinstance(username, str) or not username:
            raise Unauthenticated("the token review named no user", reason="MISSING_CLAIM")
        return username

    def _review(self, token: str) -> dict[str, Any]:
        """Blocking: post the review and return its ``status``."""
        try:
            own = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            _log.error(
                "cannot read central's own service-account token (sync.auth.serviceAccount.tokenReview.tokenFile "
                "%s): %s",
                self._token_file,
                error.strerror,
            )
            raise Unavailable(
                "central cannot review tokens now (its own service-account token is unreadable)",
                reason="TOKEN_REVIEW_UNAVAILABLE",
            ) from None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(self._audiences)},
        }
        self.requests += 1
        try:
            answer = self._client.post(self._url, body, headers={"Authorization": f"Bearer {own}"})
        except FetchError as error:
            hint = ""
            if error.status in (401, 403):
                hint = " (central's service account needs the system:auth-delegator ClusterRole)"
            _log.error("TokenReview failed: %s%s", error, hint)
            raise Unavailable(
                "central cannot review tokens now (the Kubernetes API server did not answer the review)",
                reason="TOKEN_REVIEW_UNAVAILABLE",
                retry_after=5.0,
            ) from None
        status = answer.get("status")
        if not isinstance(status, dict):
            _log.error("TokenReview answer from %s has no status object", self._url)
            raise Unavailable(
                "central cannot review tokens now (the answer had no status)", reason="TOKEN_REVIEW_UNAVAILABLE"
            )
        return status
