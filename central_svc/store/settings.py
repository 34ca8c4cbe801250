"""Settings every replica shares, kept in the database they share."""

from __future__ import annotations

from central_svc.store.database import Database


async def page_token_key(database: Database) -> bytes:
    """The MAC key of page tokens (created by the first migration)."""
    async with database.connection() as connection:
        cursor = await connection.execute("SELECT value FROM server_settings WHERE name = 'page_token_key'")
        row = await cursor.fetchone()
    if row is None:
        raise RuntimeError("server_settings has no page_token_key; run the migrations")
    return bytes(row[0])
