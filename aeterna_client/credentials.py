"""Client-side credentials: what the edge (or an agent) presents on each call.

A ``CredentialSource`` yields the metadata for the next call. The channel's
client interceptor asks it before every call, so rotated secrets and refreshed
tokens are picked up without reopening the channel:

* ``ApiKeyCredentials``: ``authorization: Bearer sk-...`` from
  ``sync.auth.apiKey`` or the file ``apiKey`` in ``sync.auth.secretDir``
  (re-read on each call, so a rotated Kubernetes secret takes effect).
* ``OAuth2ClientCredentials``: a client-credentials token from ``tokenUrl``
  (HTTP Basic client authentication, RFC 6749 section 2.3.1), cached and
  refreshed ``REFRESH_MARGIN`` before it expires; while the endpoint is down a
  still-valid cached token keeps being used.
* ``ServiceAccountTokenCredentials``: the projected token file, read at call
  time (the kubelet rotates it in place).
* ``DevelopmentCredentials``: the ``x-aeterna-agent-id``/``tenant`` headers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from aeterna_shared.config.model import AuthConfig
from aeterna_shared.errors import InvalidArgument, Unauthenticated, Unavailable
from interceptors.auth import AGENT_ID_HEADER, TENANT_ID_HEADER

_log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]

REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a cached token is refreshed (a tenth of its lifetime when shorter)."""


class CredentialSource(Protocol):
    """Yields the credential metadata of the next call."""

    async def metadata(self) -> Metadata:
        """Metadata pairs to add to the call."""
        ...


class DevelopmentCredentials:
    """Auth method ``none``: name this edge in headers (central trusts them only in development)."""

    def __init__(self, agent_id: str, tenant_id: str) -> None:
        self._metadata: Metadata = ((AGENT_ID_HEADER, agent_id), (TENANT_ID_HEADER, tenant_id))

    async def metadata(self) -> Metadata:
        """The identity headers."""
        return self._metadata


class NoCredentials:
    """Nothing to add (``mtls``: the client certificate is the credential)."""

    async def metadata(self) -> Metadata:
        """No metadata."""
        return ()


class ApiKeyCredentials:
    """A static API key, given directly or read from a (mounted secret) file on each call."""

    def __init__(self, key: str | None = None, *, key_file: Path | None = None) -> None:
        if not key and key_file is None:
            raise InvalidArgument(
                "auth method apiKey needs sync.auth.apiKey or an apiKey file in sync.auth.secretDir",
                reason="INVALID_CONFIG",
            )
        self._key = key
        self._key_file = key_file

    async def metadata(self) -> Metadata:
        """``authorization: Bearer <key>``."""
        key = self._key
        if self._key_file is not None:
            try:
                key = self._key_file.read_text(encoding="utf-8").strip()
            except OSError:
                raise Unauthenticated("the API key file cannot be read", reason="CREDENTIAL_UNAVAILABLE") from None
        return (("authorization", f"Bearer {key}"),)


class ServiceAccountTokenCredentials:
    """The Kubernetes projected service-account token, read from its file at call time."""

    def __init__(self, token_path: Path) -> None:
        self._path = token_path

    async def metadata(self) -> Metadata:
        """``authorization: Bearer <token>``."""
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except OSError:
            raise Unauthenticated(
                f"the service-account token {self._path} cannot be read", reason="CREDENTIAL_UNAVAILABLE"
            ) from None
        return (("authorization", f"Bearer {token}"),)


class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant with a cached, proactively refreshed token."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not token_url.startswith(("https://", "http://")):
            raise InvalidArgument("sync.auth.tokenUrl must be an http(s) URL", reason="INVALID_CONFIG")
        self._url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many tokens were fetched (observability and tests)."""

    async def metadata(self) -> Metadata:
        """``authorization: Bearer <access token>``, fetching or refreshing it when due."""
        return (("authorization", f"Bearer {await self.token()}"),)

    async def token(self) -> str:
        """The current access token."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                token, lifetime = await asyncio.to_thread(self._fetch)
            except Unavailable:
                if self._token is not None and now < self._expires_at:
                    _log.warning("token endpoint unavailable; using the cached token until it expires")
                    return self._token
                raise
            self._token = token
            self._expires_at = now + lifetime
            self._refresh_at = now + lifetime - min(REFRESH_MARGIN, lifetime / 10)
            self.fetches += 1
            return token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        basic = base64.b64encode(
            f"{urllib.parse.quote_plus(self._client_id)}:{urllib.parse.quote_plus(self._client_secret)}".encode()
        ).decode("ascii")
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self._url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            # The error carries the open response; close it so the socket is released.
            error.close()
            # 4xx means our client credentials are wrong: not worth retrying soon.
            if 400 <= error.code < 500:
                raise Unauthenticated(
                    f"the token endpoint refused the client credentials (HTTP {error.code})",
                    reason="TOKEN_REQUEST_REFUSED",
                ) from None
            raise Unavailable(
                f"the token endpoint failed (HTTP {error.code})", reason="TOKEN_ENDPOINT_UNAVAILABLE"
            ) from None
        except (OSError, ValueError) as error:
            raise Unavailable(
                f"the token endpoint cannot be reached ({type(error).__name__})", reason="TOKEN_ENDPOINT_UNAVAILABLE"
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable("the token endpoint returned no access_token", reason="TOKEN_ENDPOINT_UNAVAILABLE")
        lifetime = float(body.get("expires_in") or 300)
        return token, lifetime


def _secret(auth: AuthConfig, name: str, direct: str | None) -> str | None:
    if direct:
        return direct
    directory = auth.secret_dir
    if directory and (Path(directory) / name).is_file():
        return (Path(directory) / name).read_text(encoding="utf-8").strip()
    return None


def credential_source(auth: AuthConfig, agent_id: str, tenant_id: str) -> CredentialSource:
    """What ``auth.method`` (``sync.auth``) makes this process present; ``none`` names ``agent_id``/``tenant_id``."""
    if auth.method == "apiKey":
        key_file = Path(auth.secret_dir) / "apiKey" if auth.secret_dir and not auth.api_key else None
        return ApiKeyCredentials(auth.api_key, key_file=key_file)
    if auth.method == "oauth2":
        url = _secret(auth, "tokenUrl", auth.token_url)
        client_id = _secret(auth, "clientId", auth.client_id)
        client_secret = _secret(auth, "clientSecret", auth.client_secret)
        if not (url and client_id and client_secret):
            raise InvalidArgument(
                "auth method oauth2 needs tokenUrl, clientId and clientSecret (config or secretDir)",
                reason="INVALID_CONFIG",
            )
        return OAuth2ClientCredentials(url, client_id, client_secret, scope=auth.scope)
    if auth.method == "serviceAccount":
        return ServiceAccountTokenCredentials(Path(auth.service_account.token_path))
    if auth.method == "mtls":
        return NoCredentials()
    return DevelopmentCredentials(agent_id, tenant_id)
