"""JSON over HTTPS to the services central trusts for identities: an OIDC issuer and the Kubernetes API server.

Why it exists, and why like this:

* Central fetches an issuer's discovery document and JWKS and posts
  TokenReviews. These are rare requests (a JWKS every few minutes, one review
  per new token), so the standard library's ``urllib`` is enough and no HTTP
  client joins the runtime dependencies. It is blocking: callers on the event
  loop run ``HttpsJson.get``/``post`` through ``asyncio.to_thread`` (see
  ``aeterna_security.jwks`` and ``aeterna_security.tokenreview``); only the one
  check at start-up, before anything is served, calls it directly.
* HTTPS only, verified against a configured CA bundle or the system roots.
  Redirects are followed only to other ``https://`` URLs: keys that arrived in
  the clear could have been replaced on the way.
* Answers are capped in size (a hostile or broken endpoint cannot exhaust
  memory) and must be JSON objects.
* Failures become one ``FetchError`` whose message names the URL and the kind
  of failure (the HTTP status, the connection or TLS error), never a
  credential, so it can be logged as it is. The adapters above map it to the
  domain errors (``Unavailable``) callers see.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO, Any

from aeterna_shared.config.loader import ConfigError

MAX_RESPONSE_BYTES = 1024 * 1024
"""The largest answer read (JWKS and TokenReview answers are a few kilobytes)."""


class FetchError(Exception):
    """A request failed; ``status`` is the HTTP status when the server answered one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.startswith("https://"):
            raise urllib.error.HTTPError(
                req.full_url, code, f"refused redirect to a non-https URL ({msg})", headers, fp
            )
        # Authorization must not follow a redirect to another host; urllib keeps it, so drop it.
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None:
            redirected.remove_header("Authorization")
        return redirected


def tls_context(ca_file: str | None, key: str) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` as the only roots, else the system roots.

    An unreadable bundle is a ``ConfigError`` naming ``key``.
    """
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"invalid configuration: {key}: cannot read the CA bundle {ca_file}: {reason}") from None


class HttpsJson:
    """GET and POST of JSON documents over verified HTTPS (blocking: run it in a worker thread)."""

    def __init__(self, context: ssl.SSLContext, *, timeout: float) -> None:
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())
        self._timeout = timeout

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON object at ``url``."""
        request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})  # noqa: S310
        return self._open(request)

    def post(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Post ``body`` as JSON; the JSON object answered."""
        request = urllib.request.Request(  # noqa: S310 - https:// only, checked by the config model
            url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Accept": "application/json", "Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        return self._open(request)

    def _open(self, request: urllib.request.Request) -> dict[str, Any]:
        url = request.full_url
        if not url.startswith("https://"):
            raise FetchError(f"{url} is not an https:// URL")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            error.close()  # it carries the open response; release the socket
            raise FetchError(f"{url} answered HTTP {error.code}", status=error.code) from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise FetchError(f"{url} cannot be reached ({type(error).__name__}: {reason})") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise FetchError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes")
        try:
            document = json.loads(raw)
        except ValueError:
            raise FetchError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} did not answer a JSON object")
        return document
