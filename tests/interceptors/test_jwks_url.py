"""JWT keys from a URL: OIDC discovery, caching, rotation, an IdP outage, a wrong issuer, config errors.

The IdP is a real HTTPS server (``https_server``) with a CA made here, serving
an OpenID configuration document and a JWKS of real keys; tokens are signed
with those keys. Calls go through a real TLS gRPC server with the real
interceptor chain where the point is what a client sees (status code and
``ErrorInfo.reason``); where the point is *when* central fetches (TTL, the
rate limit on unknown kids), the real ``OAuth2Authenticator`` runs on a
``RemoteJwks`` with a clock the test moves, against the same server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from aeterna_client.channel import open_central_channel
from aeterna_client.credentials import ApiKeyCredentials
from aeterna_security.https_json import HttpsJson, tls_context
from aeterna_security.identity import Identity
from aeterna_security.jwks import RemoteJwks, RemoteJwksSettings
from aeterna_shared.config import ConfigError, load_config
from aeterna_shared.errors import AeternaError, Unauthenticated, Unavailable
from interceptors.authenticators import JwtRules, OAuth2Authenticator
from interceptors.chain import server_interceptors
from tests.interceptors.conftest import ServeFactory, edge_config, error_reason, make_config, server_config
from tests.interceptors.https_server import HttpRequest, HttpsPki, HttpsServer, make_pki
from tests.support.tls import TlsMaterial

REALM = "/realms/aeterna"
DISCOVERY = f"{REALM}/.well-known/openid-configuration"
JWKS = f"{REALM}/protocol/openid-connect/certs"
AUDIENCE = "aeterna-central"


class SigningKey:
    """A real private key with its kid, its public JWK, and tokens signed with it."""

    def __init__(self, kid: str, algorithm: str = "RS256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        if algorithm == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=kid, alg=algorithm, use="sig")
        self.jwk: dict[str, Any] = jwk

    def token(self, issuer: str, sub: str = "edge-a", *, kid: str | None = None, **claims: Any) -> str:
        """A token of ``issuer`` for ``sub``, valid for five minutes; ``kid`` may name another key on purpose."""
        now = int(time.time())
        payload = {"sub": sub, "iss": issuer, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(payload, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


class Idp:
    """An OIDC provider on a real HTTPS server: discovery and a JWKS whose keys the test changes."""

    def __init__(self, server: HttpsServer) -> None:
        self.server = server
        self.keys: list[SigningKey] = []
        self.announced_issuer: str | None = None
        self.jwks_status = 200
        server.routes[DISCOVERY] = self._discovery
        server.routes[JWKS] = self._jwks

    @property
    def issuer(self) -> str:
        """The issuer central is configured with (and the discovery document names, unless told otherwise)."""
        return self.server.url + REALM

    @property
    def jwks_fetches(self) -> int:
        """How many times central fetched the JWKS."""
        return self.server.counts[JWKS]

    @property
    def discovery_fetches(self) -> int:
        """How many times central fetched the discovery document."""
        return self.server.counts[DISCOVERY]

    def _discovery(self, request: HttpRequest) -> tuple[int, dict[str, Any]]:
        return 200, {
            "issuer": self.announced_issuer or self.issuer,
            "jwks_uri": self.server.url + JWKS,
            "token_endpoint": self.issuer + "/protocol/openid-connect/token",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def _jwks(self, request: HttpRequest) -> tuple[int, dict[str, Any]]:
        if self.jwks_status != 200:
            return self.jwks_status, {"error": "temporarily unavailable"}
        return 200, {"keys": [key.jwk for key in self.keys]}


@pytest.fixture(scope="module")
def idp_pki(tmp_path_factory: pytest.TempPathFactory) -> HttpsPki:
    return make_pki(tmp_path_factory.mktemp("idp-pki"))


@pytest.fixture(scope="module")
def first_key() -> SigningKey:
    return SigningKey("key-1")


@pytest.fixture
def idp(idp_pki: HttpsPki, first_key: SigningKey) -> Iterator[Idp]:
    server = HttpsServer(idp_pki).start()
    provider = Idp(server)
    provider.keys = [first_key]
    try:
        yield provider
    finally:
        server.stop()


def _jwt_config(idp: Idp, idp_pki: HttpsPki, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer,
        "oidcDiscovery": True,
        "caFile": str(idp_pki.ca_file),
        "audience": AUDIENCE,
        **extra,
    }


async def _oauth_server(serve: ServeFactory, tls: TlsMaterial, jwt_section: dict[str, Any]) -> Any:
    return await serve(server_config(tls, {"sync": {"auth": {"method": "oauth2", "jwt": jwt_section}}}))


async def _search(running: Any, tls: TlsMaterial, token: str) -> sync_pb2.SearchVectorsResponse:
    async with open_central_channel(edge_config(tls, running.port), credentials=ApiKeyCredentials(token)) as channel:
        response: sync_pb2.SearchVectorsResponse = await sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(
            sync_pb2.SearchVectorsRequest(limit=1)
        )
        return response


async def _refused(running: Any, tls: TlsMaterial, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        await _search(running, tls, token)
    return raised.value


# --- through a real gRPC server ---------------------------------------------------------------


async def test_token_verifies_with_keys_found_by_oidc_discovery(
    serve: ServeFactory, tls_material: TlsMaterial, idp: Idp, idp_pki: HttpsPki, first_key: SigningKey
) -> None:
    running = await _oauth_server(serve, tls_material, _jwt_config(idp, idp_pki))
    # Discovery and the first keys were fetched while the server was built.
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)
    response = await _search(running, tls_material, first_key.token(idp.issuer))
    assert len(response.results) == 1  # the servicer saw an identity
    # A token of another issuer is still refused, with the keys at hand.
    error = await _refused(running, tls_material, first_key.token("https://evil.example"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "WRONG_ISSUER"
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


async def test_rotated_key_is_fetched_once_and_unknown_kids_are_rate_limited(
    serve: ServeFactory, tls_material: TlsMaterial, idp: Idp, idp_pki: HttpsPki, first_key: SigningKey
) -> None:
    running = await _oauth_server(
        serve, tls_material, _jwt_config(idp, idp_pki, jwksRefreshMinInterval="1h", jwksCacheTtl="1h")
    )
    await _search(running, tls_material, first_key.token(idp.issuer))
    assert idp.jwks_fetches == 1

    # The IdP rotates: it publishes a new key and signs new tokens with it.
    second = SigningKey("key-2", "ES256")
    idp.keys = [first_key, second]
    await _search(running, tls_material, second.token(idp.issuer))
    assert idp.jwks_fetches == 2  # exactly one refetch, for the unknown kid

    # Garbage kids (and a key published after that refetch) do not make central ask again within the interval.
    third = SigningKey("key-3", "ES256")
    idp.keys = [first_key, second, third]
    for kid in ("garbage-1", "garbage-2", "key-3"):
        error = await _refused(running, tls_material, third.token(idp.issuer, kid=kid))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(error) == "UNKNOWN_SIGNING_KEY"
    assert idp.jwks_fetches == 2
    # Both known keys keep working meanwhile.
    await _search(running, tls_material, first_key.token(idp.issuer))
    await _search(running, tls_material, second.token(idp.issuer))
    assert idp.jwks_fetches == 2


async def test_no_keys_at_all_is_unavailable_then_recovers(
    serve: ServeFactory,
    tls_material: TlsMaterial,
    idp: Idp,
    idp_pki: HttpsPki,
    first_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idp.jwks_status = 503
    with caplog.at_level(logging.WARNING, logger="aeterna_security.jwks"):
        running = await _oauth_server(serve, tls_material, _jwt_config(idp, idp_pki, jwksRefreshMinInterval="0s"))
    # The start goes on (the IdP may come back); it says why keys are missing.
    assert "not loaded at start" in caplog.text
    assert "HTTP 503" in caplog.text
    token = first_key.token(idp.issuer)
    error = await _refused(running, tls_material, token)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # retry later: the credential was not judged
    assert error_reason(error) == "JWKS_UNAVAILABLE"
    assert "HTTP 503" in (error.details() or "")
    assert token not in (error.details() or "")
    idp.jwks_status = 200
    await _search(running, tls_material, token)


async def test_unreachable_idp_at_start_is_unavailable_not_unauthenticated(
    serve: ServeFactory, tls_material: TlsMaterial, idp: Idp, idp_pki: HttpsPki, first_key: SigningKey
) -> None:
    issuer = idp.issuer
    idp.server.stop()
    running = await _oauth_server(serve, tls_material, _jwt_config(idp, idp_pki))
    error = await _refused(running, tls_material, first_key.token(issuer))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "JWKS_UNAVAILABLE"
    assert "cannot be reached" in (error.details() or "")


async def test_wrong_issuer_in_discovery_is_refused_at_start(
    idp: Idp, idp_pki: HttpsPki, tls_material: TlsMaterial
) -> None:
    idp.announced_issuer = "https://login.other.example/realms/aeterna"
    config = server_config(tls_material, {"sync": {"auth": {"method": "oauth2", "jwt": _jwt_config(idp, idp_pki)}}})
    with pytest.raises(ConfigError) as raised:
        server_interceptors(config, role="central")
    message = raised.value.message
    assert message.startswith("invalid configuration: sync.auth.jwt:")
    assert "sync.auth.jwt.issuer" in message
    assert "https://login.other.example/realms/aeterna" in message
    assert idp.issuer in message
    assert idp.jwks_fetches == 0  # no key of that provider was ever trusted


async def test_idp_certificate_from_an_untrusted_ca_gives_no_keys(
    idp: Idp, idp_pki: HttpsPki, first_key: SigningKey, tls_material: TlsMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    # Without jwt.caFile central trusts the system roots, which never signed the test IdP's certificate.
    section = _jwt_config(idp, idp_pki)
    del section["caFile"]
    config = make_config({"sync": {"auth": {"method": "oauth2", "jwt": section}}})
    with caplog.at_level(logging.WARNING, logger="aeterna_security.jwks"):
        authenticator = OAuth2Authenticator.from_config(config.sync.auth)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert idp.discovery_fetches == 0  # the TLS handshake failed before any request
    with pytest.raises(Unavailable) as raised:
        await authenticator.authenticate(_bearer(first_key.token(idp.issuer)), {})
    assert raised.value.reason == "JWKS_UNAVAILABLE"


# --- when central fetches: the real authenticator on a clock the test moves ---------------------


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _authenticator(idp: Idp, idp_pki: HttpsPki, clock: Clock, *, ttl: float, interval: float) -> OAuth2Authenticator:
    settings = RemoteJwksSettings(
        jwks_url=None,
        discovery_url=idp.issuer + "/.well-known/openid-configuration",
        issuer=idp.issuer,
        cache_ttl=ttl,
        min_refresh_interval=interval,
    )
    keys = RemoteJwks(settings, HttpsJson(tls_context(str(idp_pki.ca_file), "caFile"), timeout=5), clock=clock)
    keys.prime()
    rules = JwtRules(issuer=idp.issuer, audience=AUDIENCE, leeway_seconds=5, algorithms=("RS256", "ES256"))
    return OAuth2Authenticator(keys, rules)


async def _wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.01)


async def test_unknown_kid_refetch_is_allowed_again_after_the_interval(
    idp: Idp, idp_pki: HttpsPki, first_key: SigningKey
) -> None:
    clock = Clock()
    authenticator = _authenticator(idp, idp_pki, clock, ttl=3600, interval=30)
    assert idp.jwks_fetches == 1
    later = SigningKey("key-late", "ES256")
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(_bearer(first_key.token(idp.issuer, kid="garbage")), {})
    assert idp.jwks_fetches == 2  # the first unknown kid is worth one refetch
    idp.keys = [first_key, later]
    clock.now += 29
    with pytest.raises(Unauthenticated) as raised:
        await authenticator.authenticate(_bearer(later.token(idp.issuer)), {})
    assert raised.value.reason == "UNKNOWN_SIGNING_KEY"
    assert idp.jwks_fetches == 2  # within 30 s of the last forced fetch: no request
    clock.now += 1
    identity = await authenticator.authenticate(_bearer(later.token(idp.issuer)), {})
    assert identity == Identity(agent_id="edge-a", scopes=frozenset({"sync", "agent"}), method="oauth2")
    assert idp.jwks_fetches == 3


async def test_keys_are_refetched_in_the_background_after_the_ttl(
    idp: Idp, idp_pki: HttpsPki, first_key: SigningKey
) -> None:
    clock = Clock()
    authenticator = _authenticator(idp, idp_pki, clock, ttl=300, interval=30)
    token = first_key.token(idp.issuer)
    await authenticator.authenticate(_bearer(token), {})
    clock.now += 299
    await authenticator.authenticate(_bearer(token), {})
    assert idp.jwks_fetches == 1  # still fresh
    clock.now += 1
    await authenticator.authenticate(_bearer(token), {})  # answered with the cached keys at once
    await _wait_for(lambda: idp.jwks_fetches == 2)  # while they are fetched again
    await authenticator.authenticate(_bearer(token), {})
    assert idp.jwks_fetches == 2


async def test_idp_down_keeps_the_last_good_keys(
    idp: Idp, idp_pki: HttpsPki, first_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    authenticator = _authenticator(idp, idp_pki, clock, ttl=300, interval=30)
    token = first_key.token(idp.issuer)
    idp.server.stop()
    clock.now += 301  # the keys are stale and the IdP is gone
    with caplog.at_level(logging.WARNING, logger="aeterna_security.jwks"):
        assert (await authenticator.authenticate(_bearer(token), {})).agent_id == "edge-a"
        await _wait_for(lambda: "keeping the 1 keys fetched before" in caplog.text)
        assert (await authenticator.authenticate(_bearer(token), {})).agent_id == "edge-a"
        # A new kid cannot be fetched: with keys at hand that is the token's problem, not an outage.
        clock.now += 30
        with pytest.raises(AeternaError) as raised:
            await authenticator.authenticate(_bearer(first_key.token(idp.issuer, kid="new-key")), {})
    assert isinstance(raised.value, Unauthenticated)
    assert raised.value.reason == "UNKNOWN_SIGNING_KEY"


# --- configuration errors ---------------------------------------------------------------------


def _write(tmp_path: Path, jwt_section: str, method: str = "oauth2") -> Path:
    path = tmp_path / "central.yaml"
    path.write_text(f"sync:\n  auth:\n    method: {method}\n    jwt:\n{jwt_section}")
    return path


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "      jwksFile: jwks.json\n      jwksUrl: https://idp.example/jwks\n",
            "sync.auth.jwt: Value error, jwksFile and jwksUrl are exclusive",
        ),
        (
            "      jwksFile: jwks.json\n      issuer: https://idp.example\n      oidcDiscovery: true\n",
            "sync.auth.jwt: Value error, jwksFile and oidcDiscovery are exclusive",
        ),
        (
            "      jwksUrl: https://idp.example/jwks\n      discoveryUrl: https://idp.example/.well-known/x\n"
            "      issuer: https://idp.example\n",
            "sync.auth.jwt: Value error, jwksUrl and discoveryUrl are exclusive",
        ),
        (
            "      oidcDiscovery: true\n",
            "sync.auth.jwt: Value error, OIDC discovery (oidcDiscovery or discoveryUrl) needs issuer",
        ),
        ("      jwksUrl: http://idp.example/jwks\n", "sync.auth.jwt: Value error, jwksUrl must be an https:// URL"),
    ],
    ids=["file-and-url", "file-and-discovery", "url-and-discovery", "discovery-without-issuer", "plain-http"],
)
def test_conflicting_key_sources_are_config_errors(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, section), {})
    assert expected in raised.value.message


@pytest.mark.parametrize("method", ["oauth2", "serviceAccount"])
def test_jwt_method_without_keys_is_a_config_error(tmp_path: Path, method: str) -> None:
    config = load_config(_write(tmp_path, "      audience: aeterna-central\n", method), {})
    with pytest.raises(ConfigError) as raised:
        server_interceptors(config, role="central")
    message = raised.value.message
    assert "sync.auth.jwt.jwksUrl" in message
    assert "sync.auth.jwt.jwksFile" in message
    assert "sync.auth.jwt.oidcDiscovery" in message
    assert ("tokenReview" in message) == (method == "serviceAccount")
