"""Service-account tokens reviewed by a local server speaking the Kubernetes TokenReview API.

The "API server" is a real HTTPS server (``https_server``, its own CA) that
behaves as kube-apiserver does for ``POST /apis/authentication.k8s.io/v1/tokenreviews``:
it answers 401 unless the caller presents central's own token, verifies the
reviewed token's signature with the cluster's key (made here), its expiry and
its audiences against ``spec.audiences``, and refuses tokens it was told were
invalidated (a deleted pod or service account), with kube-apiserver's error texts.
Calls go through a real TLS gRPC server with the real interceptor chain and
assert what the client sees: the status code, ``ErrorInfo.reason``, the
message, and that the token itself never appears.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from cryptography.hazmat.primitives.asymmetric import rsa

from aeterna_client.channel import open_central_channel
from aeterna_client.credentials import ApiKeyCredentials
from aeterna_security.tokenreview import TokenReviewer
from aeterna_shared.config.model import TokenReviewSettings
from interceptors.authenticators import ServiceAccountAuthenticator, TokenReviewSubjects
from tests.interceptors.conftest import ServeFactory, edge_config, error_reason, server_config
from tests.interceptors.https_server import HttpRequest, HttpsPki, HttpsServer, make_pki
from tests.support.tls import TlsMaterial

REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:aeterna:aeterna-edge-sync"
CENTRAL_TOKEN = "central-own-sa-token-0123456789"


class ApiServer:
    """The TokenReview endpoint of a cluster whose service-account tokens are signed with ``key``."""

    def __init__(self, server: HttpsServer) -> None:
        self.server = server
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.invalidated: set[str] = set()
        self.audience_aware = True
        server.routes[REVIEWS] = self._review

    @property
    def reviews(self) -> int:
        """How many reviews central posted."""
        return self.server.counts[REVIEWS]

    def invalidate(self, token: str) -> str:
        """Treat ``token`` as invalidated from now on (its pod or service account was deleted); returns it."""
        self.invalidated.add(hashlib.sha256(token.encode()).hexdigest())
        return token

    def token(self, sub: str = SUBJECT, *, audience: str = "aeterna-central", key: Any = None) -> str:
        """A projected service-account token as the kubelet mounts it."""
        now = int(time.time())
        claims = {
            "iss": CLUSTER_ISSUER,
            "sub": sub,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": sub.split(":")[2], "serviceaccount": {"name": sub.split(":")[3]}},
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "cluster-1"})

    def _review(self, request: HttpRequest) -> tuple[int, dict[str, Any]]:
        if request.headers.get("authorization") != f"Bearer {CENTRAL_TOKEN}":
            return 401, {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Unauthorized",
                "code": 401,
            }
        body = request.body or {}
        if body.get("apiVersion") != "authentication.k8s.io/v1" or body.get("kind") != "TokenReview":
            return 400, {"kind": "Status", "status": "Failure", "reason": "BadRequest", "code": 400}
        spec = body.get("spec", {})
        wanted = list(spec.get("audiences") or [])
        answer: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        token = str(spec.get("token", ""))
        try:
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["RS256"],
                issuer=CLUSTER_ISSUER,
                options={"verify_aud": False},
            )
        except jwt.InvalidTokenError:
            answer["status"] = {
                "authenticated": False,
                "user": {},
                "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            }
            return 201, answer
        if hashlib.sha256(token.encode()).hexdigest() in self.invalidated:
            answer["status"] = {
                "authenticated": False,
                "user": {},
                "error": "[invalid bearer token, service account token has been invalidated]",
            }
            return 201, answer
        shared = [a for a in claims["aud"] if a in wanted]
        if wanted and not shared:
            answer["status"] = {
                "authenticated": False,
                "user": {},
                "error": "[invalid bearer token, token audiences "
                f'["{claims["aud"][0]}"] is invalid for the target audiences {wanted}]',
            }
            return 201, answer
        answer["status"] = {
            "authenticated": True,
            "user": {
                "username": claims["sub"],
                "uid": "5d4c3b2a-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:aeterna", "system:authenticated"],
            },
            "audiences": shared if self.audience_aware else [],
        }
        return 201, answer


@pytest.fixture(scope="module")
def api_pki(tmp_path_factory: pytest.TempPathFactory) -> HttpsPki:
    return make_pki(tmp_path_factory.mktemp("kube-api-pki"))


@pytest.fixture
def api_server(api_pki: HttpsPki) -> Iterator[ApiServer]:
    server = HttpsServer(api_pki).start()
    try:
        yield ApiServer(server)
    finally:
        server.stop()


@pytest.fixture
def central_token_file(tmp_path: Path) -> Path:
    path = tmp_path / "central-token"
    path.write_text(CENTRAL_TOKEN + "\n")
    return path


async def _central(
    serve: ServeFactory,
    tls: TlsMaterial,
    api_server: ApiServer,
    api_pki: HttpsPki,
    token_file: Path,
    **review: Any,
) -> Any:
    service_account = {
        "verification": "tokenReview",
        "subjects": {SUBJECT: "tenant-a/edge-a"},
        "tokenReview": {
            "url": api_server.server.url,
            "caFile": str(api_pki.ca_file),
            "tokenFile": str(token_file),
            **review,
        },
    }
    return await serve(
        server_config(tls, {"sync": {"auth": {"method": "serviceAccount", "serviceAccount": service_account}}})
    )


async def _refused(coroutine: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        await coroutine
    return raised.value


async def test_reviewed_token_is_mapped_through_subjects(
    serve: ServeFactory, tls_material: TlsMaterial, api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file)
    # The edge presents its projected token exactly as in a cluster (serviceAccount.tokenPath).
    token_path = central_token_file.parent / "edge-token"
    token_path.write_text(api_server.token())
    config = edge_config(
        tls_material,
        running.port,
        {"sync": {"auth": {"method": "serviceAccount", "serviceAccount": {"tokenPath": str(token_path)}}}},
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-a"))
        # The subject mapped to edge-a: another agent's data is refused.
        error = await _refused(stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-b")))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(error) == "AGENT_MISMATCH"
    # One review, as kube-apiserver expects it; the second call was answered from the cache.
    assert api_server.reviews == 1
    review = api_server.server.requests[0]
    assert review.method == "POST"
    assert review.headers["authorization"] == f"Bearer {CENTRAL_TOKEN}"
    assert review.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token_path.read_text(), "audiences": ["aeterna-central"]},
    }

    # A service account the subjects map does not list is refused after its review.
    stranger = api_server.token("system:serviceaccount:other:intruder")
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials(stranger)
    ) as channel:
        error = await _refused(sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "UNKNOWN_SERVICE_ACCOUNT"
    assert running.servicer.calls == 2  # the two ListEpisodes calls; the stranger never reached it


@pytest.mark.parametrize(
    ("make_token", "review_error"),
    [
        (lambda api: api.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "cryptographic"),
        (lambda api: api.token(audience="https://kubernetes.default.svc"), "is invalid for the target audiences"),
        (lambda api: api.invalidate(api.token()), "has been invalidated"),
    ],
    ids=["other-cluster", "other-audience", "invalidated"],
)
async def test_refused_token_is_unauthenticated_with_the_reason(
    serve: ServeFactory,
    tls_material: TlsMaterial,
    api_server: ApiServer,
    api_pki: HttpsPki,
    central_token_file: Path,
    caplog: pytest.LogCaptureFixture,
    make_token: Any,
    review_error: str,
) -> None:
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file)
    token = make_token(api_server)
    with caplog.at_level(logging.DEBUG):
        async with open_central_channel(
            edge_config(tls_material, running.port), credentials=ApiKeyCredentials(token)
        ) as channel:
            error = await _refused(
                sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest())
            )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_REVIEW_REFUSED"
    details = error.details() or ""
    assert details.startswith("the Kubernetes API server refused the token: [invalid bearer token")
    assert review_error in details
    assert token not in details
    assert token not in str(error.trailing_metadata())
    assert token not in caplog.text
    assert api_server.reviews == 1
    assert running.servicer.calls == 0


async def test_api_server_down_is_unavailable(
    serve: ServeFactory, tls_material: TlsMaterial, api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file)
    api_server.server.stop()
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials(api_server.token())
    ) as channel:
        error = await _refused(sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "TOKEN_REVIEW_UNAVAILABLE"
    assert running.servicer.calls == 0


async def test_central_without_review_rights_is_unavailable_and_says_why(
    serve: ServeFactory,
    tls_material: TlsMaterial,
    api_server: ApiServer,
    api_pki: HttpsPki,
    central_token_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    central_token_file.write_text("a-token-the-api-server-does-not-accept")  # noqa: ASYNC240 - test setup
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file)
    with caplog.at_level(logging.ERROR, logger="aeterna_security.tokenreview"):
        async with open_central_channel(
            edge_config(tls_material, running.port), credentials=ApiKeyCredentials(api_server.token())
        ) as channel:
            error = await _refused(
                sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest())
            )
    # The edge's credential was never judged: retry later, do not give up on it.
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "TOKEN_REVIEW_UNAVAILABLE"
    assert "HTTP 401" in caplog.text
    assert "system:auth-delegator" in caplog.text


async def test_review_without_our_audience_is_refused(
    serve: ServeFactory, tls_material: TlsMaterial, api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    # An API server that answers authenticated with no audiences vouches only for its own audience.
    api_server.audience_aware = False
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file)
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials(api_server.token())
    ) as channel:
        error = await _refused(sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "WRONG_AUDIENCE"


async def test_garbage_bearer_is_refused_without_a_review(
    serve: ServeFactory, tls_material: TlsMaterial, api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file, cacheTtl="0s")
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials("sk-not-a-service-account-token")
    ) as channel:
        error = await _refused(sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "INVALID_TOKEN"
    assert api_server.reviews == 0


async def test_without_cache_every_call_is_reviewed(
    serve: ServeFactory, tls_material: TlsMaterial, api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    running = await _central(serve, tls_material, api_server, api_pki, central_token_file, cacheTtl="0s")
    token = api_server.token()
    async with open_central_channel(
        edge_config(tls_material, running.port), credentials=ApiKeyCredentials(token)
    ) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.SearchVectors(sync_pb2.SearchVectorsRequest())
        # The pod is deleted: its token is invalidated, and the next call (no cache) is refused.
        api_server.invalidate(token)
        error = await _refused(stub.SearchVectors(sync_pb2.SearchVectorsRequest()))
    assert error_reason(error) == "TOKEN_REVIEW_REFUSED"
    assert api_server.reviews == 2


async def test_concurrent_calls_with_one_token_share_one_review(
    api_server: ApiServer, api_pki: HttpsPki, central_token_file: Path
) -> None:
    settings = TokenReviewSettings(
        url=api_server.server.url, ca_file=str(api_pki.ca_file), token_file=str(central_token_file), cache_ttl="0s"
    )
    authenticator = ServiceAccountAuthenticator(
        TokenReviewSubjects(TokenReviewer.from_config(settings, "aeterna-central")), {SUBJECT: "tenant-a/edge-a"}
    )
    metadata = (("authorization", f"Bearer {api_server.token()}"),)
    identities = await asyncio.gather(*(authenticator.authenticate(metadata, {}) for _ in range(8)))
    assert {(i.agent_id, i.tenant_id, i.method) for i in identities} == {("edge-a", "tenant-a", "serviceAccount")}
    assert api_server.reviews == 1
