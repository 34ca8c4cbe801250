"""Read-only counts from central's PostgreSQL, for the demo's final tally.

The tally must come from the database itself, not from anything the services
report about themselves: that is what makes "nothing lost" a check rather
than a claim.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class CentralCounts:
    """How many of the given items central's tables hold."""

    sessions: int
    vectors: int
    decisions: int
    decision_statuses: dict[str, int]


def central_counts(
    conninfo: str, session_ids: Iterable[str], vector_ids: Iterable[str], decision_ids: Iterable[str]
) -> CentralCounts:
    """Count the listed ids in central's tables (each table's primary key makes a row unique)."""
    with psycopg.connect(conninfo) as connection:
        sessions = connection.execute(
            "SELECT count(*) FROM session_memory WHERE session_id = ANY(%s)", (list(session_ids),)
        ).fetchone()
        vectors = connection.execute(
            "SELECT count(*) FROM vectors WHERE vector_id = ANY(%s)", (list(vector_ids),)
        ).fetchone()
        rows = connection.execute(
            "SELECT status, count(*) FROM decisions WHERE decision_id = ANY(%s) GROUP BY status",
            (list(decision_ids),),
        ).fetchall()
    statuses = {str(status): int(count) for status, count in rows}
    return CentralCounts(
        sessions=int(sessions[0]) if sessions else 0,
        vectors=int(vectors[0]) if vectors else 0,
        decisions=sum(statuses.values()),
        decision_statuses=statuses,
    )
