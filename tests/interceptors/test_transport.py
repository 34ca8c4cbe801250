"""mTLS, certificate pinning (central by the edge, edges by central), message limits and deadlines."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import grpc
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio

from aeterna_client.channel import PinVerifier, central_settings, open_central_channel
from aeterna_security.pins import PinMismatch
from aeterna_shared.errors import Unavailable
from interceptors.authenticators import hash_api_key
from tests.interceptors.conftest import ServeFactory, edge_config, error_reason, server_config, shape_calls
from tests.support.tls import TlsMaterial

KEY_A = "sk-transport-edge-a"


def _keys(tmp_path: Path) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - sha256: {hash_api_key(KEY_A)}\n    agentId: edge-a\n    tenant: tenant-a\n")
    return str(path)


async def _search(channel: aio.Channel) -> Any:
    return await sync_pb2_grpc.SyncServiceStub(channel).SearchVectors(sync_pb2.SearchVectorsRequest(limit=1))


# --- the edge pins central ------------------------------------------------------------


async def test_pinned_server_is_reached_and_unpinned_server_gets_nothing(
    serve: ServeFactory, tls_material: TlsMaterial
) -> None:
    genuine = await serve(server_config(tls_material))
    # A valid certificate from the same, trusted CA, but with another key: exactly
    # what pinning exists to catch (a mis-issued or stolen-CA certificate).
    impostor = await serve(server_config(tls_material, cert="other_server"))
    pins = {"sync": {"network": {"certificatePinning": True, "pinnedCertificates": [tls_material.server.pin]}}}

    async with open_central_channel(edge_config(tls_material, genuine.port, pins)) as channel:
        await _search(channel)
    assert genuine.servicer.calls == 1

    async with open_central_channel(edge_config(tls_material, impostor.port, pins)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await _search(channel)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(raised.value) == "PIN_MISMATCH"
        # Streams are refused the same way, before any message leaves.
        call = sync_pb2_grpc.SyncServiceStub(channel).SyncSessions(iter([sync_pb2.SyncSessionsRequest()]))
        with pytest.raises(grpc.RpcError) as raised_stream:
            await call.read()
        assert error_reason(raised_stream.value) == "PIN_MISMATCH"
        # gRPC itself never connected: the channel stayed idle.
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
    assert impostor.servicer.calls == 0
    assert impostor.handled("SearchVectors", "OK") == 0


async def test_rotation_pins_and_ca_pin(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    impostor = await serve(server_config(tls_material, cert="other_server"))
    # Several pins (rotation): the second one matches.
    rotation = {"sync": {"network": {"pinnedCertificates": [tls_material.server.pin, tls_material.other_server.pin]}}}
    async with open_central_channel(edge_config(tls_material, impostor.port, rotation)) as channel:
        await _search(channel)
    # Pinning the issuing CA accepts every certificate it issued.
    ca_pin = {"sync": {"network": {"pinnedCertificates": [tls_material.ca.pin]}}}
    config = edge_config(tls_material, impostor.port, ca_pin)
    verifier = PinVerifier.for_target(config.sync.central_server.target, central_settings(config))
    assert verifier is not None
    assert verifier.check_now() == tls_material.ca.pin


def test_pin_probe_refuses_synchronously(tls_material: TlsMaterial) -> None:
    config = edge_config(
        tls_material, 1, {"sync": {"network": {"pinnedCertificates": [tls_material.other_server.pin]}}}
    )
    verifier = PinVerifier.for_target(config.sync.central_server.target, central_settings(config))
    assert verifier is not None
    # Nothing listens on port 1: the probe reports central unreachable, not a pin problem.
    with pytest.raises(Unavailable) as raised:
        verifier.check_now()
    assert raised.value.reason == "CENTRAL_UNREACHABLE"
    assert not isinstance(raised.value, PinMismatch)


async def test_server_from_untrusted_ca_is_refused(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    running = await serve(server_config(tls_material, cert="wrong_ca_server"))
    async with open_central_channel(edge_config(tls_material, running.port)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await _search(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert running.servicer.calls == 0


# --- central requires and pins client certificates ---------------------------------------


@pytest.fixture
async def mtls_server(serve: ServeFactory, tls_material: TlsMaterial, tmp_path: Path) -> Any:
    return await serve(
        server_config(
            tls_material,
            {
                "tls": {"requireClientCert": True, "clientPins": {"edge-a": [tls_material.edge_a.pin]}},
                "sync": {"auth": {"method": "apiKey", "apiKeysFile": _keys(tmp_path)}},
            },
        )
    )


def _edge_tls(tls: TlsMaterial, port: int, cert: Any | None) -> Any:
    extra: dict[str, Any] = {"sync": {"auth": {"method": "apiKey", "apiKey": KEY_A}}}
    if cert is not None:
        extra["tls"] = {"certFile": str(cert.cert), "keyFile": str(cert.key)}
    return edge_config(tls, port, extra)


async def test_client_without_certificate_is_refused(mtls_server: Any, tls_material: TlsMaterial) -> None:
    async with open_central_channel(_edge_tls(tls_material, mtls_server.port, None)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await _search(channel)
    # The TLS handshake fails, so no RPC exists: gRPC reports UNAVAILABLE.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.servicer.calls == 0


async def test_client_certificate_from_untrusted_ca_is_refused(mtls_server: Any, tls_material: TlsMaterial) -> None:
    async with open_central_channel(_edge_tls(tls_material, mtls_server.port, tls_material.wrong_ca_edge)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await _search(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.servicer.calls == 0


async def test_client_pins_per_agent(mtls_server: Any, tls_material: TlsMaterial) -> None:
    async with open_central_channel(_edge_tls(tls_material, mtls_server.port, tls_material.edge_a)) as channel:
        await _search(channel)
    # edge-b's certificate is valid (same CA) but not pinned for edge-a's key.
    async with open_central_channel(_edge_tls(tls_material, mtls_server.port, tls_material.edge_b)) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await _search(channel)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(raised.value) == "CLIENT_PIN_MISMATCH"
    assert mtls_server.servicer.calls == 1


async def test_mtls_method_takes_identity_from_certificate(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    running = await serve(
        server_config(tls_material, {"tls": {"requireClientCert": True}, "sync": {"auth": {"method": "mtls"}}})
    )
    config = edge_config(
        tls_material,
        running.port,
        {
            "sync": {"auth": {"method": "mtls"}},
            "tls": {"certFile": str(tls_material.edge_b.cert), "keyFile": str(tls_material.edge_b.key)},
        },
    )
    async with open_central_channel(config) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-b"))
        with pytest.raises(grpc.RpcError) as raised:
            await stub.ListEpisodes(sync_pb2.ListEpisodesRequest(agent_id="edge-a"))
    assert error_reason(raised.value) == "AGENT_MISMATCH"


# --- message limits ---------------------------------------------------------------------


def _raw_channel(tls: TlsMaterial, port: int, *, compression: grpc.Compression) -> aio.Channel:
    # A deliberately unrestricted client (no send limit), as an attacker would use.
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.cert_pem)
    return aio.secure_channel(
        f"localhost:{port}",
        credentials,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        compression=compression,
    )


async def test_oversized_message_and_gzip_bomb_are_refused(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    running = await serve(server_config(tls_material))
    metadata = (("x-aeterna-agent-id", "edge-a"),)
    eleven_mb = b"\x00" * (11 * 1024 * 1024)
    assert len(gzip.compress(eleven_mb)) < 64 * 1024  # on the wire it is tiny: a bomb

    for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
        async with _raw_channel(tls_material, running.port, compression=compression) as channel:
            call = shape_calls(channel).unary_unary
            with pytest.raises(grpc.RpcError) as raised:
                await call(eleven_mb, metadata=metadata, timeout=30)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, compression
            # The server is still up and serves a normal message on the same channel.
            assert await call(b"small", metadata=metadata, timeout=10) == b"edge-a"
    assert running.shapes_received == [5, 5]


# --- deadlines ----------------------------------------------------------------------------


async def test_every_call_gets_a_default_deadline(serve: ServeFactory, tls_material: TlsMaterial) -> None:
    running = await serve(server_config(tls_material))
    config = edge_config(tls_material, running.port, {"sync": {"centralServer": {"timeout": "7s"}}})
    async with open_central_channel(config) as channel:
        await _search(channel)
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.SearchVectors(sync_pb2.SearchVectorsRequest(), timeout=60)
    default, explicit = running.servicer.deadlines
    assert default is not None
    assert 0 < default <= 7.5  # deadline propagation rounds up slightly
    assert explicit is not None
    assert 7.5 < explicit <= 61
