"""The security matrix over a real TLS server with the real interceptor chain.

Each case asserts the precise status code and ``ErrorInfo.reason``, and that
nothing was stored by a refused call.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio

from aeterna_client.channel import open_central_channel
from aeterna_client.credentials import ApiKeyCredentials, NoCredentials
from interceptors.authenticators import hash_api_key
from tests.interceptors.conftest import (
    JwtIssuer,
    ServeFactory,
    edge_config,
    error_reason,
    server_config,
    signed_batch,
)
from tests.support.tls import TlsMaterial

API_KEY_A = "sk-edge-a-0123456789abcdef"
API_KEY_B = "sk-edge-b-fedcba9876543210"


def _api_keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - sha256: {hash_api_key(API_KEY_A)}\n    agentId: edge-a\n    tenant: tenant-a\n    region: eu\n"
        f"  - sha256: {hash_api_key(API_KEY_B)}\n    agentId: edge-b\n    tenant: tenant-b\n"
    )
    return path


async def _search(channel: aio.Channel) -> sync_pb2.SearchVectorsResponse:
    stub = sync_pb2_grpc.SyncServiceStub(channel)
    response: sync_pb2.SearchVectorsResponse = await stub.SearchVectors(sync_pb2.SearchVectorsRequest(limit=1))
    return response


async def _expect(coroutine: Any, code: grpc.StatusCode, reason: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        await coroutine
    error = raised.value
    assert error.code() == code, error.details()
    if reason is not None:
        assert error_reason(error) == reason
    return error


@pytest.fixture
async def api_key_server(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> Any:
    return await serve(
        server_config(
            tls_material, {"sync": {"auth": {"method": "apiKey", "apiKeysFile": str(_api_keys_file(tmp_path))}}}
        )
    )


async def test_valid_api_key_is_served(api_key_server: Any, tls_material: TlsMaterial) -> None:
    config = edge_config(
        tls_material, api_key_server.port, {"sync": {"auth": {"method": "apiKey", "apiKey": API_KEY_A}}}
    )
    async with open_central_channel(config) as channel:
        response = await _search(channel)
    assert len(response.results) == 1
    assert api_key_server.handled("SearchVectors", "OK") == 1


async def test_api_key_from_mounted_secret_dir(api_key_server: Any, tls_material: TlsMaterial, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "apiKey").write_text(API_KEY_B + "\n")
    config = edge_config(
        tls_material, api_key_server.port, {"sync": {"auth": {"method": "apiKey", "secretDir": str(secret)}}}
    )
    async with open_central_channel(config) as channel:
        await _search(channel)


async def test_no_credential_is_unauthenticated(api_key_server: Any, tls_material: TlsMaterial) -> None:
    config = edge_config(tls_material, api_key_server.port)
    async with open_central_channel(config, credentials=NoCredentials()) as channel:
        await _expect(_search(channel), grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIAL")
    assert api_key_server.servicer.calls == 0


async def test_wrong_api_key_is_unauthenticated(api_key_server: Any, tls_material: TlsMaterial) -> None:
    config = edge_config(tls_material, api_key_server.port)
    async with open_central_channel(config, credentials=ApiKeyCredentials("sk-not-a-real-key")) as channel:
        await _expect(_search(channel), grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    assert api_key_server.servicer.calls == 0
    assert api_key_server.handled("SearchVectors", "UNAUTHENTICATED") == 1


async def test_another_agents_data_is_permission_denied(api_key_server: Any, tls_material: TlsMaterial) -> None:
    config = edge_config(
        tls_material, api_key_server.port, {"sync": {"auth": {"method": "apiKey", "apiKey": API_KEY_A}}}
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await _expect(
            stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-b")),
            grpc.StatusCode.PERMISSION_DENIED,
            "AGENT_MISMATCH",
        )
        # A batch claiming to be edge-b, even correctly signed, stores nothing.
        call = stub.SyncSessions(iter([signed_batch("edge-b")]))
        await _expect(call.read(), grpc.StatusCode.PERMISSION_DENIED, "AGENT_MISMATCH")
    assert api_key_server.servicer.stored == {}


async def test_signed_batch_tampered_and_replayed(api_key_server: Any, tls_material: TlsMaterial) -> None:
    config = edge_config(
        tls_material, api_key_server.port, {"sync": {"auth": {"method": "apiKey", "apiKey": API_KEY_A}}}
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        good = signed_batch("edge-a", sessions=2)
        ack = await stub.SyncSessions(iter([good])).read()
        assert isinstance(ack, sync_pb2.SyncSessionsResponse), ack  # not the end of the stream
        assert ack.ack.processed == 2
        stored_before = dict(api_key_server.servicer.stored)

        tampered = signed_batch("edge-a")
        tampered.sessions[0].user_id = "someone-else"
        await _expect(stub.SyncSessions(iter([tampered])).read(), grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
        # A captured batch replayed after the freshness window: the signature
        # is valid, but sent_time is signed too, so it cannot be re-dated.
        replayed = signed_batch("edge-a", sent=datetime.now(UTC) - timedelta(minutes=10))
        await _expect(stub.SyncSessions(iter([replayed])).read(), grpc.StatusCode.UNAUTHENTICATED, "STALE_BATCH")
        wrong_key = signed_batch("edge-a", key=b"not-the-edge-key")
        await _expect(stub.SyncSessions(iter([wrong_key])).read(), grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
    assert api_key_server.servicer.stored == stored_before


# --- JWT (oauth2) -------------------------------------------------------------------


@pytest.fixture
async def oauth_server(serve: ServeFactory, tls_material: TlsMaterial, jwt_issuer: JwtIssuer) -> Any:
    return await serve(
        server_config(
            tls_material,
            {
                "sync": {
                    "auth": {
                        "method": "oauth2",
                        "jwt": {
                            "jwksFile": str(jwt_issuer.jwks_file),
                            "issuer": jwt_issuer.issuer,
                            "audience": jwt_issuer.audience,
                            "clockSkew": "5s",
                        },
                    }
                }
            },
        )
    )


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda i: i.token("edge-a", lifetime=-60), "TOKEN_EXPIRED"),
        (lambda i: i.token("edge-a", audience="someone-else"), "WRONG_AUDIENCE"),
        (lambda i: i.token("edge-a", issuer="https://evil.example"), "WRONG_ISSUER"),
        (lambda i: i.token("edge-a", not_before=time.time() + 600), "TOKEN_NOT_YET_VALID"),
        (lambda i: i.token("edge-a", key=i.stranger_key), "BAD_TOKEN_SIGNATURE"),
        (lambda i: i.token("edge-a", kid="rotated-away"), "UNKNOWN_SIGNING_KEY"),
        (lambda i: "not.a.jwt", "INVALID_TOKEN"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "not-yet-valid", "untrusted-key", "unknown-kid", "garbage"],
)
async def test_bad_jwt_is_unauthenticated(
    oauth_server: Any, tls_material: TlsMaterial, jwt_issuer: JwtIssuer, make_token: Any, reason: str
) -> None:
    config = edge_config(tls_material, oauth_server.port)
    async with open_central_channel(config, credentials=ApiKeyCredentials(make_token(jwt_issuer))) as channel:
        await _expect(_search(channel), grpc.StatusCode.UNAUTHENTICATED, reason)
    assert oauth_server.servicer.calls == 0


async def test_expired_within_clock_skew_is_accepted(
    oauth_server: Any, tls_material: TlsMaterial, jwt_issuer: JwtIssuer
) -> None:
    token = jwt_issuer.token("edge-a", lifetime=-2, algorithm="ES256", tenant="tenant-a")
    config = edge_config(tls_material, oauth_server.port)
    async with open_central_channel(config, credentials=ApiKeyCredentials(token)) as channel:
        await _search(channel)


# --- Kubernetes service-account tokens ---------------------------------------------------


async def test_valid_service_account_token(
    serve: ServeFactory, tls_material: TlsMaterial, jwt_issuer: JwtIssuer, tmp_path: Path
) -> None:
    subject = "system:serviceaccount:aeterna:aeterna-edge-sync"
    running = await serve(
        server_config(
            tls_material,
            {
                "sync": {
                    "auth": {
                        "method": "serviceAccount",
                        "serviceAccount": {"subjects": {subject: "tenant-a/edge-a"}},
                        "jwt": {"jwksFile": str(jwt_issuer.jwks_file), "issuer": jwt_issuer.issuer},
                    }
                }
            },
        )
    )
    token_path = tmp_path / "token"
    token_path.write_text(jwt_issuer.token(subject))
    config = edge_config(
        tls_material,
        running.port,
        {"sync": {"auth": {"method": "serviceAccount", "serviceAccount": {"tokenPath": str(token_path)}}}},
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        # The mapped identity is edge-a: its own data is allowed, edge-b's is not.
        await stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-a"))
        await _expect(
            stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-b")),
            grpc.StatusCode.PERMISSION_DENIED,
            "AGENT_MISMATCH",
        )
        # The kubelet rotates the token in place: the next call reads the new one.
        token_path.write_text(jwt_issuer.token("system:serviceaccount:other:intruder"))
        await _expect(_search(channel), grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SERVICE_ACCOUNT")
        token_path.write_text(jwt_issuer.token(subject, audience="kubernetes.default.svc"))
        await _expect(_search(channel), grpc.StatusCode.UNAUTHENTICATED, "WRONG_AUDIENCE")
