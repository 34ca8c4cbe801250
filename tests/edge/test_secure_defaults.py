"""The edge is secure by default (issue 14): outside development mode it refuses to sign with
the public development key or to run with ``sync.auth.method: none``, and the redis-servers it
owns accept only their owner.

Real ``aeterna edge`` processes and real redis-servers; another local user is played by
``nobody`` (the tests run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import redis
from aeterna.edge.v1 import edge_pb2, edge_pb2_grpc
from grpc import aio

from aeterna_cli.processes import AETERNA, child_env, write_config
from edge_svc.store.redis_server import OwnedRedis
from interceptors.authenticators import hash_api_key
from tests.edge.conftest import closed_port, edge_document
from tests.support.services import ServiceFactory
from tests.support.users import as_nobody

AGENT_KEY = "sk-agent-secure-defaults-0123456789"  # a test credential, not a secret

needs_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("redis-cli") is None,
    reason="needs root, setpriv and redis-cli",
)


def run_edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``aeterna edge --config <config> ...`` to completion (a refused start exits at once)."""
    return subprocess.run(
        [*AETERNA, "edge", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )


def test_edge_refuses_development_settings_outside_development_mode(tmp_path: Path) -> None:
    data = tmp_path / "edge-data"
    document = edge_document(data, closed_port())
    del document["sync"]["signing"]
    config = write_config(tmp_path / "edge.yaml", document)

    result = run_edge(config)

    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: edge refuses to start outside development mode")
    assert "\n" not in message  # one paragraph
    assert "Traceback" not in result.stderr
    for named in ("sync.signing.key", "sync.signing.keyFile", "public development key", "sync.auth.method is none"):
        assert named in message
    assert "--development" in message
    assert "development: true" in message
    # Refused before anything started: no data directory, no owned redis-server.
    assert not data.exists()


def test_a_signing_key_alone_is_not_enough(tmp_path: Path) -> None:
    config = write_config(tmp_path / "edge.yaml", edge_document(tmp_path / "data", closed_port()))

    result = run_edge(config)

    assert result.returncode == 2
    assert "sync.auth.method is none" in result.stderr
    assert "would sign its batches" not in result.stderr


async def test_edge_starts_in_production_mode_with_a_key_file_and_a_real_auth_method(
    services: ServiceFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_text("edge-test-signing-key\n")
    api_keys = write_config(
        tmp_path / "agent-keys.yaml", {"keys": [{"sha256": hash_api_key(AGENT_KEY), "agentId": "agent-1"}]}
    )
    document = edge_document(tmp_path / "data", closed_port())
    document["sync"]["signing"] = {"keyFile": str(key_file)}
    document["sync"]["auth"] = {"method": "apiKey", "apiKey": "edge-key-for-central", "apiKeysFile": str(api_keys)}
    edge = services.make("edge", "edge", document, development=False).start()
    assert edge.extra_args == []
    async with aio.insecure_channel(edge.target) as channel:
        stub = edge_pb2_grpc.EdgeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetEdgeStatus(edge_pb2.GetEdgeStatusRequest(), metadata=(("x-aeterna-agent-id", "agent-1"),))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = await stub.GetEdgeStatus(
            edge_pb2.GetEdgeStatusRequest(), metadata=(("authorization", f"Bearer {AGENT_KEY}"),)
        )
        assert status.agent_id == "edge-test-1"
    assert "public development key" not in edge.log_text()
    assert edge.stop() == 0


# --- owned redis-servers accept only their owner ----------------------------------------------


def _owner_pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


@needs_nobody
def test_an_owned_redis_on_its_socket_refuses_other_users(tmp_path: Path) -> None:
    owned = OwnedRedis.start(tmp_path / "redis-sessions", maxmemory=0, policy="noeviction", durable=True)
    try:
        assert owned.url.startswith("unix://")  # precondition: the short path holds the socket
        assert _owner_pings(owned.url)
        refused = as_nobody("redis-cli", "-s", owned.url.removeprefix("unix://"), "ping")
        assert "PONG" not in refused.stdout
        assert "Permission denied" in refused.stdout + refused.stderr
    finally:
        owned.stop()


@needs_nobody
def test_an_owned_redis_on_a_loopback_port_demands_its_password(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["a-rather-long-directory-name"] * 4), "redis-sessions")
    owned = OwnedRedis.start(deep, maxmemory=0, policy="noeviction", durable=True)
    try:
        assert owned.url.startswith("redis://:")  # the fallback: a port, with a password in the URL
        assert _owner_pings(owned.url)
        host_port = owned.url.rsplit("@", 1)[1].removesuffix("/0")
        host, port = host_port.split(":")
        refused = as_nobody("redis-cli", "-h", host, "-p", port, "ping")
        assert "PONG" not in refused.stdout
        assert "NOAUTH" in refused.stdout + refused.stderr
        # Nor is the password where another user could read it: not in the command line.
        cmdline = Path(f"/proc/{owned.pid}/cmdline").read_text()
        password = owned.url.removeprefix("redis://:").split("@", 1)[0]
        assert password not in cmdline
        assert password not in owned.display_url
    finally:
        owned.stop()
