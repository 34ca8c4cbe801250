"""``aeterna central migrate`` (the Helm migration Job's command) creates the schema
in an empty database, is safe to repeat, and refuses to run without a database."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from central_svc.store.embedded_postgres import EmbeddedPostgres
from tests.support.services import write_config


def _migrate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeterna_cli.main", "central", "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_creates_schema_and_is_idempotent(postgres_server: EmbeddedPostgres, tmp_path: Path) -> None:
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    config = write_config(tmp_path / "central.yaml", {"postgresql": {"url": postgres_server.url_for(name)}})

    for _ in range(2):
        result = _migrate(config)
        assert result.returncode == 0, result.stderr
        assert "database schema is up to date" in result.stdout

    with psycopg.connect(postgres_server.conninfo(name)) as connection:
        tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"session_memory", "decisions", "policy_bundles", "alembic_version"} <= tables


def test_migrate_without_database_url_is_refused(tmp_path: Path) -> None:
    result = _migrate(write_config(tmp_path / "central.yaml", {}))
    assert result.returncode == 2
    assert "postgresql.url is not set" in result.stderr
