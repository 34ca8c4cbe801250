"""Turning the configured SQLAlchemy URL into what psycopg wants."""

from __future__ import annotations

import sqlalchemy as sa


def psycopg_conninfo(url: str) -> str:
    """A libpq connection string for a ``postgresql[+driver]://`` URL (query host= included)."""
    parsed = sa.make_url(url)
    return str(parsed.set(drivername="postgresql").render_as_string(hide_password=False))


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg 3 driver named, for SQLAlchemy and Alembic."""
    parsed = sa.make_url(url)
    return str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
