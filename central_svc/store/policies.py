"""PostgreSQL adapter of ``PolicyStore``; a publish notifies every replica on commit."""

from __future__ import annotations

from typing import Any

from central_svc.policies import Bundle, PolicyContent, stale_version
from central_svc.store.database import Database

CHANNEL = "aeterna_policy_bundles"
"""The NOTIFY channel; the payload is the new version number."""

_COLUMNS = "version, data, checksum, publisher, published_at"


def _bundle(row: tuple[Any, ...]) -> Bundle:
    return Bundle(
        version=int(row[0]),
        content=PolicyContent.from_json(bytes(row[1])),
        checksum=row[2],
        publisher=row[3],
        published_at=row[4],
    )


class PostgresPolicyStore:
    """The ``policy_bundles`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def publish(self, content: PolicyContent, checksum: str, publisher: str, expected_version: int) -> Bundle:
        """Next version under a table lock, so that versions are gap-free and ordered across replicas."""
        async with self._database.transaction() as connection:
            await connection.execute("LOCK TABLE policy_bundles IN SHARE ROW EXCLUSIVE MODE")
            cursor = await connection.execute("SELECT coalesce(max(version), 0) FROM policy_bundles")
            row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            if expected_version and expected_version != current:
                raise stale_version(expected_version, current)
            cursor = await connection.execute(
                f"INSERT INTO policy_bundles (version, data, checksum, publisher) VALUES (%s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (current + 1, content.to_json(), checksum, publisher),
            )
            inserted = await cursor.fetchone()
            assert inserted is not None
            # Delivered to every listening replica when (and only if) the transaction commits.
            await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(current + 1)))
            return _bundle(inserted)

    async def latest(self) -> Bundle | None:
        """The newest bundle."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(f"SELECT {_COLUMNS} FROM policy_bundles ORDER BY version DESC LIMIT 1")
            row = await cursor.fetchone()
        return None if row is None else _bundle(row)

    async def get(self, version: int) -> Bundle | None:
        """One version."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(f"SELECT {_COLUMNS} FROM policy_bundles WHERE version = %s", (version,))
            row = await cursor.fetchone()
        return None if row is None else _bundle(row)

    async def newer_than(self, version: int) -> list[Bundle]:
        """Bundles after ``version``, oldest first."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_COLUMNS} FROM policy_bundles WHERE version > %s ORDER BY version", (version,)
            )
            return [_bundle(row) for row in await cursor.fetchall()]
