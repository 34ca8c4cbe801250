"""Server-side authenticators, one per ``sync.auth.method``, and the factory that picks one.

Each maps a call's metadata (and TLS auth context) to an ``Identity`` or raises
``Unauthenticated`` with a stable reason. Messages never contain the credential.

* ``apiKey``: ``authorization: Bearer sk-...``. Only SHA-256 hashes are kept;
  the presented key is hashed and looked up (a lookup by a hash of a secret
  leaks nothing an attacker can use, so no constant-time scan is needed).
* ``oauth2``: a JWT (RS256/ES256) verified against the issuer's keys:
  signature, ``iss``, ``aud``, ``exp``, ``nbf`` with ``jwt.clockSkew`` leeway.
  The keys come from one of: a JWKS file (``jwt.jwksFile``, reloaded when it
  changes), a JWKS URL (``jwt.jwksUrl``) or OIDC discovery (``jwt.oidcDiscovery``
  / ``jwt.discoveryUrl``), fetched, cached and rotated by
  ``aeterna_security.jwks``. The agent id comes from ``jwt.agentIdClaim``
  (default ``sub``), the tenant from ``jwt.tenantClaim``, scopes from ``scope``/``scp``.
* ``serviceAccount``: a Kubernetes projected token, verified like the above
  against the cluster issuer's keys (``serviceAccount.verification: jwks``,
  the default) or by the API server itself (``tokenReview``, see
  ``aeterna_security.tokenreview``); the subject
  ``system:serviceaccount:<namespace>:<name>`` maps to an agent through
  ``sync.auth.serviceAccount.subjects`` (value ``agent`` or ``tenant/agent``);
  when that map is empty the agent id is ``<name>`` in the default tenant,
  when it is not empty it is an allow-list and other subjects are refused.
* ``mtls``: the verified client certificate's subject CN is the agent id, its
  OU the tenant (see ``certs.create_client_cert``).
* ``none``: development only, the caller names itself.

The JWT and TokenReview authenticators are coroutines (``authenticate`` is
``async``): fetching keys or asking the API server must not block the event
loop; the interceptor awaits whatever ``authenticate`` returns. Their remote
sources are built, and checked once, when the chain is built: a discovery
document naming another issuer stops the start with a ``ConfigError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import yaml

from aeterna_security.identity import Identity
from aeterna_security.jwks import RemoteJwks
from aeterna_security.tls import identity_from_certificate, peer_certificate_pem
from aeterna_security.tokenreview import TokenReviewer
from aeterna_shared.config.loader import ConfigError
from aeterna_shared.config.model import AuthConfig, JwtVerification
from aeterna_shared.errors import InvalidArgument, Unauthenticated
from interceptors.auth import Authenticator, DevelopmentAuthenticator

_log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def hash_api_key(key: str) -> str:
    """The hex SHA-256 that central stores instead of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The bearer token of the call; ``Unauthenticated(MISSING_CREDENTIAL)`` when there is none."""
    for key, value in metadata:
        if key.lower() == AUTHORIZATION_HEADER and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("the authorization header must be 'Bearer <token>'", reason="MALFORMED_CREDENTIAL")
    raise Unauthenticated("this call needs a credential (authorization: Bearer ...)", reason="MISSING_CREDENTIAL")


class ApiKeyAuthenticator:
    """Authenticates ``Bearer sk-...`` against a table of SHA-256 hashes."""

    def __init__(self, identities_by_hash: Mapping[str, Identity]) -> None:
        self._by_hash = dict(identities_by_hash)

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        """Look the hashed key up."""
        token = bearer_token(metadata)
        identity = self._by_hash.get(hash_api_key(token))
        if identity is None:
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        return identity

    @classmethod
    def from_config(cls, api_keys_file: str | None, development_keys: Mapping[str, str]) -> ApiKeyAuthenticator:
        """Load ``sync.auth.apiKeysFile`` and the development ``central.apiKeys`` (hashed here)."""
        table: dict[str, Identity] = {}
        if api_keys_file:
            table.update(load_api_keys_file(Path(api_keys_file)))
        for agent_id, key in development_keys.items():
            table[hash_api_key(key)] = Identity(
                agent_id=agent_id, tenant_id="default", scopes=frozenset({"*"}), method="apiKey"
            )
        if not table:
            _log.warning("auth method apiKey with no keys configured: every call will be refused")
        return cls(table)


def load_api_keys_file(path: Path) -> dict[str, Identity]:
    """Read an API-key file: ``keys: [{sha256, agentId, tenant, region, scopes}]``.

    ``sha256`` is the hex digest of the key (``aeterna certs`` is not needed:
    ``printf %s "$KEY" | sha256sum``). A plain ``key`` field is accepted too and
    hashed at load, for secrets mounted from Kubernetes, but never kept.
    """
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(f"sync.auth.apiKeysFile: cannot read {path}: {error}", reason="INVALID_CONFIG") from None
    entries = loaded.get("keys", []) if isinstance(loaded, dict) else loaded
    if not isinstance(entries, list):
        raise InvalidArgument(f"{path}: expected 'keys:' with a list of entries", reason="INVALID_CONFIG")
    table: dict[str, Identity] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("agentId"):
            raise InvalidArgument(f"{path}: keys[{index}] needs agentId", reason="INVALID_CONFIG")
        digest = str(entry.get("sha256") or "").lower()
        if not digest and entry.get("key"):
            digest = hash_api_key(str(entry["key"]))
        if len(digest) != 64:
            raise InvalidArgument(f"{path}: keys[{index}] needs a 64-hex-digit sha256", reason="INVALID_CONFIG")
        scopes = entry.get("scopes") or ["sync", "agent"]
        table[digest] = Identity(
            agent_id=str(entry["agentId"]),
            tenant_id=str(entry.get("tenant") or "default"),
            region=str(entry.get("region") or ""),
            scopes=frozenset(str(s) for s in scopes),
            method="apiKey",
        )
    return table


_JWT_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "TOKEN_EXPIRED", "the token has expired"),
    (jwt.ImmatureSignatureError, "TOKEN_NOT_YET_VALID", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "WRONG_AUDIENCE", "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "WRONG_ISSUER", "the token comes from an untrusted issuer"),
    (jwt.MissingRequiredClaimError, "MISSING_CLAIM", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "BAD_TOKEN_SIGNATURE", "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "BAD_TOKEN_ALGORITHM", "the token's algorithm is not accepted"),
)


class SigningKeys(Protocol):
    """Where a token's verification key comes from: a JWKS file (``JwksKeys``) or a URL (``RemoteJwks``)."""

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key named ``kid``; ``Unauthenticated(UNKNOWN_SIGNING_KEY)`` or ``Unavailable`` otherwise."""
        ...


class JwksKeys:
    """The keys of a JWKS file, reloaded when the file changes (key rotation)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._keys: dict[str, jwt.PyJWK] = {}

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key with ``kid`` (or the only key when the token names none)."""
        self._reload_if_changed()
        if kid is not None and kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise Unauthenticated("the token is signed by an unknown key", reason="UNKNOWN_SIGNING_KEY")

    def _reload_if_changed(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError:
            if self._keys:
                return  # keep the last good keys while a secret is being re-mounted
            raise Unauthenticated("no JWKS available to verify tokens", reason="NO_JWKS") from None
        if mtime == self._mtime_ns:
            return
        document = json.loads(self._path.read_text(encoding="utf-8"))
        keys: dict[str, jwt.PyJWK] = {}
        for index, entry in enumerate(document.get("keys", [])):
            keys[str(entry.get("kid", index))] = jwt.PyJWK.from_dict(entry)
        self._keys = keys
        self._mtime_ns = mtime


@dataclass(frozen=True)
class JwtRules:
    """What a token must satisfy."""

    issuer: str | None
    audience: str
    leeway_seconds: float
    algorithms: tuple[str, ...]


async def verify_jwt(token: str, keys: SigningKeys, rules: JwtRules) -> dict[str, Any]:
    """Verify ``token`` and return its claims; ``Unauthenticated`` with a precise reason otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated("the token is not a JWT", reason="INVALID_TOKEN") from None
    if header.get("alg") not in rules.algorithms:
        raise Unauthenticated("the token's algorithm is not accepted", reason="BAD_TOKEN_ALGORITHM")
    key = await keys.key_for(header.get("kid"))
    required = ["exp", "aud", "sub"] + (["iss"] if rules.issuer else [])
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(rules.algorithms),
            audience=rules.audience,
            issuer=rules.issuer,
            leeway=rules.leeway_seconds,
            options={"require": required},
        )
    except jwt.InvalidTokenError as error:
        for kind, reason, message in _JWT_REASONS:
            if isinstance(error, kind):
                raise Unauthenticated(message, reason=reason) from None
        raise Unauthenticated("the token is not valid", reason="INVALID_TOKEN") from None
    return claims


def _rules(verification: JwtVerification) -> JwtRules:
    return JwtRules(
        issuer=verification.issuer,
        audience=verification.audience,
        leeway_seconds=verification.clock_skew.total_seconds(),
        algorithms=verification.algorithms,
    )


def signing_keys(auth: AuthConfig) -> SigningKeys:
    """The key source ``sync.auth.jwt`` names: a JWKS URL or discovery (checked once now), else a JWKS file.

    ``ConfigError`` when it names none (the model already refuses more than one).
    """
    remote = RemoteJwks.from_config(auth.jwt)
    if remote is not None:
        remote.prime()
        return remote
    path = auth.jwt.jwks_file
    if not path:
        what = "sync.auth.method oauth2" if auth.method == "oauth2" else "sync.auth.serviceAccount.verification jwks"
        raise ConfigError(
            f"invalid configuration: {what} needs the keys tokens are signed with: set sync.auth.jwt.jwksUrl, "
            "sync.auth.jwt.oidcDiscovery (with sync.auth.jwt.issuer) or sync.auth.jwt.jwksFile"
            + ("" if auth.method == "oauth2" else ", or sync.auth.serviceAccount.verification: tokenReview")
        )
    return JwksKeys(Path(path))


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


class OAuth2Authenticator:
    """Verifies client-credentials JWTs against the issuer's keys (a JWKS file, URL or OIDC discovery)."""

    def __init__(
        self,
        keys: SigningKeys,
        rules: JwtRules,
        *,
        agent_claim: str = "sub",
        tenant_claim: str = "tenant",
        region_claim: str = "region",
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._agent_claim = agent_claim
        self._tenant_claim = tenant_claim
        self._region_claim = region_claim

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        """Verify the bearer JWT and build the identity from its claims."""
        claims = await verify_jwt(bearer_token(metadata), self._keys, self._rules)
        agent = claims.get(self._agent_claim)
        if not isinstance(agent, str) or not agent:
            raise Unauthenticated(f"the token lacks the {self._agent_claim!r} claim", reason="MISSING_CLAIM")
        return Identity(
            agent_id=agent,
            tenant_id=str(claims.get(self._tenant_claim) or "default"),
            region=str(claims.get(self._region_claim) or ""),
            scopes=_scopes(claims) or frozenset({"sync", "agent"}),
            method="oauth2",
        )

    @classmethod
    def from_config(cls, auth: AuthConfig) -> OAuth2Authenticator:
        """From ``sync.auth.jwt``."""
        verification = auth.jwt
        return cls(
            signing_keys(auth),
            _rules(verification),
            agent_claim=verification.agent_id_claim,
            tenant_claim=verification.tenant_claim,
            region_claim=verification.region_claim,
        )


class SubjectVerifier(Protocol):
    """Verifies a service-account token and returns its subject (``system:serviceaccount:<ns>:<name>``)."""

    async def subject(self, token: str) -> str:
        """The token's subject; ``Unauthenticated`` or ``Unavailable`` otherwise."""
        ...


class JwksSubjects:
    """``verification: jwks``: the token's signature and claims, checked against the cluster issuer's keys."""

    def __init__(self, keys: SigningKeys, rules: JwtRules) -> None:
        self._keys = keys
        self._rules = rules

    async def subject(self, token: str) -> str:
        """The ``sub`` claim of the verified token."""
        claims = await verify_jwt(token, self._keys, self._rules)
        return str(claims.get("sub", ""))


class TokenReviewSubjects:
    """``verification: tokenReview``: the Kubernetes API server reviews the token."""

    def __init__(self, reviewer: TokenReviewer) -> None:
        self._reviewer = reviewer

    async def subject(self, token: str) -> str:
        """The reviewed user name."""
        return await self._reviewer.username(token)


class ServiceAccountAuthenticator:
    """Verifies Kubernetes projected service-account tokens and maps the subject to an agent."""

    def __init__(self, verifier: SubjectVerifier, subjects: Mapping[str, str]) -> None:
        self._verifier = verifier
        self._subjects = dict(subjects)

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        """Verify the token; the subject names the service account."""
        subject = await self._verifier.subject(bearer_token(metadata))
        if not subject.startswith(SERVICE_ACCOUNT_PREFIX) or subject.count(":") != 3:
            raise Unauthenticated("the token's subject is not a service account", reason="NOT_A_SERVICE_ACCOUNT")
        name = subject.rsplit(":", 1)[1]
        if self._subjects:
            mapped = self._subjects.get(subject)
            if mapped is None:
                raise Unauthenticated("this service account is not allowed", reason="UNKNOWN_SERVICE_ACCOUNT")
            tenant, _, agent = mapped.rpartition("/")
        else:
            tenant, agent = "", name
        return Identity(
            agent_id=agent,
            tenant_id=tenant or "default",
            scopes=frozenset({"sync", "agent"}),
            method="serviceAccount",
        )

    @classmethod
    def from_config(cls, auth: AuthConfig) -> ServiceAccountAuthenticator:
        """From ``sync.auth.serviceAccount`` (verification, subjects) and, for jwks, ``sync.auth.jwt``."""
        service_account = auth.service_account
        verifier: SubjectVerifier
        if service_account.verification == "tokenReview":
            verifier = TokenReviewSubjects(TokenReviewer.from_config(service_account.token_review, auth.jwt.audience))
        else:
            verifier = JwksSubjects(signing_keys(auth), _rules(auth.jwt))
        return cls(verifier, service_account.subjects)


class CertificateAuthenticator:
    """The ``mtls`` method: the verified client certificate names the agent (CN) and tenant (OU)."""

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, Any]) -> Identity:
        """Read the identity from the peer certificate gRPC verified."""
        pem = peer_certificate_pem(auth_context)
        if pem is None:
            raise Unauthenticated("this call needs a client certificate", reason="CLIENT_CERT_REQUIRED")
        agent, tenant = identity_from_certificate(pem)
        if not agent:
            raise Unauthenticated("the client certificate names no agent (CN)", reason="MISSING_CLAIM")
        return Identity(agent_id=agent, tenant_id=tenant, scopes=frozenset({"sync", "agent"}), method="mtls")


@dataclass(frozen=True)
class AuthSettings:
    """What choosing and building an authenticator reads, from three sections of the configuration."""

    auth: AuthConfig
    """``sync.auth``: the method and its settings."""
    client_cert_required: bool
    """``tls.enabled`` and ``tls.requireClientCert``: gRPC verifies a client certificate on every call."""
    development_keys: Mapping[str, str]
    """``central.apiKeys``: development API keys by agent id, hashed at load."""


def authenticator_from_config(settings: AuthSettings) -> Authenticator:
    """The authenticator ``sync.auth.method`` selects."""
    auth = settings.auth
    method = auth.method
    if method == "apiKey":
        return ApiKeyAuthenticator.from_config(auth.api_keys_file, settings.development_keys)
    if method == "oauth2":
        return OAuth2Authenticator.from_config(auth)
    if method == "serviceAccount":
        return ServiceAccountAuthenticator.from_config(auth)
    if method == "mtls":
        if not settings.client_cert_required:
            raise InvalidArgument(
                "sync.auth.method mtls needs tls.enabled and tls.requireClientCert", reason="INVALID_CONFIG"
            )
        return CertificateAuthenticator()
    _log.warning("sync.auth.method is 'none': callers name themselves (development only)")
    return DevelopmentAuthenticator()
