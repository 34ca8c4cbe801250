"""An issuer's signing keys fetched over HTTPS (``sync.auth.jwt.jwksUrl``, or found by OIDC discovery).

It lives in ``aeterna_security`` beside the other trust material (TLS roots,
pins, signing keys) because it knows nothing of gRPC: it answers "which public
key has this ``kid``", and ``interceptors.authenticators`` verifies tokens with it.

How platforms rotate keys, and what this does about it:

* Keys are cached and fetched again every ``jwt.jwksCacheTtl`` (default 5 min).
  That refetch runs in the background: calls keep being verified with the
  keys at hand meanwhile, so a slow IdP adds no latency.
* A token naming a ``kid`` the cache does not hold is usually the first token
  signed with a new key: the keys are fetched again at once and the call waits
  for them. Garbage ``kid`` values must not make central hammer the IdP, so
  such forced fetches happen at most once per ``jwt.jwksRefreshMinInterval``
  (default 30 s); in between, an unknown ``kid`` is refused
  (``UNAUTHENTICATED / UNKNOWN_SIGNING_KEY``) without a request.
* A failed fetch keeps the last good keys (and is logged): an IdP outage does
  not stop central from accepting tokens signed with keys it already knows.
  With no keys at all (the IdP has never answered since start), calls fail
  ``UNAVAILABLE / JWKS_UNAVAILABLE`` with the reason, which tells a client to
  retry rather than that its credential is wrong.
* Every fetch runs in a worker thread (``asyncio.to_thread``), never on the
  event loop. The exception is ``prime()``, called once while the server is
  built, before it serves anything: it checks OIDC discovery so that a
  discovery document naming another issuer stops the start with a
  configuration error, and loads the first keys. If the IdP cannot be reached
  then, the start goes on and the keys are fetched when the first token arrives.

OIDC discovery (``jwt.oidcDiscovery`` with ``jwt.issuer``, or
``jwt.discoveryUrl``): the document at ``<issuer>/.well-known/openid-configuration``
must name exactly the configured issuer (OpenID Connect Discovery 1.0, 4.3) and
an ``https://`` ``jwks_uri``, which is then used as the JWKS URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from aeterna_security.https_json import FetchError, HttpsJson, tls_context
from aeterna_shared.config.loader import ConfigError
from aeterna_shared.config.model import JwtVerification
from aeterna_shared.errors import Unauthenticated, Unavailable

_log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"


class DiscoveryMismatch(Exception):
    """The discovery document contradicts the configuration (another issuer, no usable jwks_uri)."""


@dataclass(frozen=True)
class RemoteJwksSettings:
    """Where the keys come from and how long they are trusted, from ``sync.auth.jwt``."""

    jwks_url: str | None
    """The JWKS URL, when it is configured directly."""
    discovery_url: str | None
    """The OpenID configuration document, when the JWKS URL is to be discovered."""
    issuer: str | None
    """The issuer the discovery document must name."""
    cache_ttl: float
    """Seconds fetched keys are used before a background refetch."""
    min_refresh_interval: float
    """Seconds between two forced fetches (unknown kid, or no keys)."""

    @classmethod
    def from_config(cls, verification: JwtVerification) -> RemoteJwksSettings | None:
        """The settings, or None when ``sync.auth.jwt`` names no remote keys (a jwksFile, or nothing)."""
        discovery = verification.discovery_url
        if discovery is None and verification.oidc_discovery and verification.issuer:
            discovery = verification.issuer.rstrip("/") + DISCOVERY_PATH
        if verification.jwks_url is None and discovery is None:
            return None
        return cls(
            jwks_url=verification.jwks_url,
            discovery_url=discovery,
            issuer=verification.issuer,
            cache_ttl=verification.jwks_cache_ttl.total_seconds(),
            min_refresh_interval=verification.jwks_refresh_min_interval.total_seconds(),
        )


def parse_jwks(document: dict[str, Any], source: str) -> dict[str, jwt.PyJWK]:
    """The signature keys of a JWKS document by kid (keys without one by position); unusable keys are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise FetchError(f"{source} is not a JWKS (no 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[str(entry.get("kid", index))] = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as error:
            _log.warning("skipping key %r of %s: %s", entry.get("kid", index), source, error)
    if not keys:
        raise FetchError(f"{source} holds no usable signature key")
    return keys


class RemoteJwks:
    """The keys at a JWKS URL, cached, refreshed on a TTL and on unknown kids (rate-limited)."""

    def __init__(
        self, settings: RemoteJwksSettings, client: HttpsJson, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._jwks_url = settings.jwks_url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._last_forced: float | None = None
        self._last_error = "no fetch attempted yet"
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.requests = 0
        """How many discovery and JWKS requests were made (observability and tests)."""

    @classmethod
    def from_config(cls, verification: JwtVerification) -> RemoteJwks | None:
        """From ``sync.auth.jwt``; None when it names no remote keys."""
        settings = RemoteJwksSettings.from_config(verification)
        if settings is None:
            return None
        context = tls_context(verification.ca_file, "sync.auth.jwt.caFile")
        return cls(settings, HttpsJson(context, timeout=verification.fetch_timeout.total_seconds()))

    @property
    def jwks_url(self) -> str | None:
        """The JWKS URL (configured, or found by discovery; None before discovery succeeded)."""
        return self._jwks_url

    def prime(self) -> None:
        """Discover and load the first keys, blocking: call it once while the server is built, before it serves.

        A discovery document that names another issuer (or no https jwks_uri)
        raises ``ConfigError``; an unreachable IdP is only logged.
        """
        try:
            self._fetch()
        except DiscoveryMismatch as error:
            raise ConfigError(f"invalid configuration: sync.auth.jwt: {error}") from None
        except FetchError as error:
            _log.warning("JWT signing keys not loaded at start (fetched again when a token arrives): %s", error)

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key named ``kid`` (or the only key, for a token that names none)."""
        now = self._clock()
        if not self._keys:
            await self._refresh_forced(now)
        elif self._stale(now):
            self._refresh_in_background()
        key = self._lookup(kid)
        if key is None and kid is not None and self._may_force(now):
            await self._refresh_forced(now)
            key = self._lookup(kid)
        if key is not None:
            return key
        if not self._keys:
            raise self._unavailable(now)
        raise Unauthenticated("the token is signed by an unknown key", reason="UNKNOWN_SIGNING_KEY")

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _stale(self, now: float) -> bool:
        if self._fetched_at is None or now - self._fetched_at < self._settings.cache_ttl:
            return False
        # After a failed refetch, wait the minimum interval before the next one.
        return self._last_attempt is None or now - self._last_attempt >= self._settings.min_refresh_interval

    def _may_force(self, now: float) -> bool:
        return self._last_forced is None or now - self._last_forced >= self._settings.min_refresh_interval

    def _unavailable(self, now: float) -> Unavailable:
        wait = self._settings.min_refresh_interval
        if self._last_forced is not None:
            wait = max(1.0, self._last_forced + self._settings.min_refresh_interval - now)
        return Unavailable(
            f"no keys to verify tokens with: {self._last_error}",
            reason="JWKS_UNAVAILABLE",
            retry_after=wait,
        )

    async def _refresh_forced(self, now: float) -> None:
        """Fetch now (callers wait), at most once per minimum interval across all callers."""
        async with self._lock:
            if not self._may_force(now):
                return  # another call fetched (or tried) while this one waited for the lock
            self._last_forced = self._clock()
            await self._refresh()

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._refresh_locked())

    async def _refresh_locked(self) -> None:
        async with self._lock:
            if self._fetched_at is not None and not self._stale(self._clock()):
                return
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self._fetch)
        except (FetchError, DiscoveryMismatch) as error:
            if self._keys:
                _log.warning("JWKS refresh failed, keeping the %d keys fetched before: %s", len(self._keys), error)
            else:
                _log.error("JWKS fetch failed and no keys are loaded, tokens cannot be verified: %s", error)

    def _fetch(self) -> None:
        """Blocking: discovery when needed, then the JWKS; updates the cache only on success."""
        self._last_attempt = self._clock()
        try:
            url = self._jwks_url or self._discover()
            self.requests += 1
            keys = parse_jwks(self._client.get(url), url)
        except (FetchError, DiscoveryMismatch) as error:
            self._last_error = str(error)
            raise
        if set(keys) != set(self._keys):
            _log.info("JWT signing keys from %s: %s", url, ", ".join(sorted(keys)))
        self._keys = keys
        self._fetched_at = self._clock()

    def _discover(self) -> str:
        url = self._settings.discovery_url
        if url is None:  # the settings always name one of the two
            raise FetchError("neither a JWKS URL nor a discovery URL is configured")
        self.requests += 1
        document = self._client.get(url)
        issuer = document.get("issuer")
        if issuer != self._settings.issuer:
            raise DiscoveryMismatch(
                f"the OIDC discovery document {url} names issuer {issuer!r}, not the configured "
                f"sync.auth.jwt.issuer {self._settings.issuer!r}: tokens of this provider would all be refused; "
                "set issuer to the provider's exact issuer (or point discoveryUrl at the right provider)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise DiscoveryMismatch(f"the OIDC discovery document {url} names no https:// jwks_uri ({jwks_uri!r})")
        self._jwks_url = jwks_uri
        return jwks_uri
