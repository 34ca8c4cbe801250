"""Running the Alembic migrations shipped in this package, programmatically, at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

_log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(url: str, *, vector_dimension: int, revision: str = "head") -> None:
    """Bring the database at ``url`` (SQLAlchemy URL) to the newest schema (or to ``revision``).

    Two replicas starting together must not both migrate, so the upgrade runs
    under a PostgreSQL advisory lock.
    """
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(7411001)"))
            connection.commit()
            try:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                config.attributes["vector_dimension"] = vector_dimension
                command.upgrade(config, revision)
                connection.commit()
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(7411001)"))
                connection.commit()
    finally:
        engine.dispose()
    _log.info("database schema is at %s", "the newest revision" if revision == "head" else f"revision {revision}")
