"""PostgreSQL adapter of ``DecisionStore``: the ``decisions`` log and the ``conflicts`` review queue.

A replayed batch costs two round trips here (the ledger runs it in pipeline
mode, see ``PostgresBatchLedger.run``): ``hold`` sends the advisory locks of
the batch's resources, the query for ids already in the log and the query for
the effective decisions in one go; ``write`` sends the insert, the superseded
marks and the review items without waiting, so they travel with the ledger's
bookkeeping. Column arrays go in PostgreSQL's binary format (``%b``): parsing
text array literals cost the server as much as the insert itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from central_svc.ports import Transaction
from central_svc.replay import ConflictRecord, ConflictState, DecisionWrites, Effective, Held, Resolution, Status
from central_svc.store.database import Connection, Database, connection_of

_INSERT = """
INSERT INTO decisions (decision_id, tenant_id, agent_id, resource, decide_time, status, data)
SELECT u.id, %(tenant)s, %(agent)s, u.resource, u.t, u.status, u.data
FROM unnest(%(ids)b::text[], %(resources)b::text[], %(times)b::timestamptz[], %(statuses)b::text[], %(data)b::bytea[])
     AS u (id, resource, t, status, data)
ON CONFLICT (decision_id) DO NOTHING
"""

_CONFLICT_COLUMNS = """
c.conflict_id::text, e.data, d.data, c.state, c.resolution, c.resolved_by, c.resolved_at, c.created_at, c.note
FROM conflicts c JOIN decisions e ON e.decision_id = c.edge_decision_id
JOIN decisions d ON d.decision_id = c.central_decision_id
"""


def _conflict(row: tuple[Any, ...]) -> ConflictRecord:
    return ConflictRecord(
        conflict_id=row[0],
        edge_decision=bytes(row[1]),
        central_decision=bytes(row[2]),
        state=ConflictState(row[3]),
        resolution=int(row[4]),
        resolved_by=row[5],
        resolved_at=row[6],
        created_at=row[7],
        note=row[8],
    )


_RESOURCE_LOCK_SPACE = 7411003
"""First key of the per-(tenant, resource) transaction advisory locks (migrations hold 7411001, snapshots 7411002)."""


async def _lock_resources(connection: Connection, tenant_id: str, resources: list[str]) -> None:
    """Serialize every transaction that changes which decision is effective on these resources.

    Row locks alone do not (tests/cluster found two effective decisions on one
    resource from two replicas): with no effective row there is nothing to
    lock, and a row superseded while a replay waited for it is skipped on
    re-check while its successor is invisible to that statement's snapshot. So
    a transaction-level lock per (tenant, resource) comes first, taken in one
    global order (no deadlocks); statements after the wait see what the other
    transaction committed. Two resources sharing a hash only wait for each other.
    """
    if not resources:
        return
    await connection.execute(
        "SELECT count(pg_advisory_xact_lock(%s, k.h)) FROM"
        " (SELECT DISTINCT hashtext(%s || '/' || r) AS h FROM unnest(%b::text[]) AS r ORDER BY h) AS k",
        (_RESOURCE_LOCK_SPACE, tenant_id, resources),
    )


class PostgresDecisionStore:
    """Decisions and conflicts in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def hold(self, transaction: Transaction, tenant_id: str, ids: list[str], resources: list[str]) -> Held:
        """Lock the resources, then read which ids the log holds and the effective decision per resource.

        One round trip in pipeline mode: the lock statement and both queries are
        sent together; PostgreSQL runs the queries after the locks are granted,
        each with a snapshot taken then, so they see what a concurrent replay on
        these resources committed.
        """
        if not ids:
            return Held(set(), {})
        connection = connection_of(transaction)
        await _lock_resources(connection, tenant_id, resources)
        known = await connection.execute(
            "SELECT decision_id FROM decisions WHERE decision_id = ANY(%b::text[])", (ids,)
        )
        effective = await connection.execute(
            "SELECT resource, decision_id, decide_time FROM decisions"
            " WHERE tenant_id = %s AND resource = ANY(%b::text[]) AND status = 'effective' FOR UPDATE",
            (tenant_id, resources),
        )
        current: dict[str, Effective] = {}
        for resource, decision_id, decide_time in await effective.fetchall():
            held = current.get(resource)
            if held is None or held.decide_time < decide_time:
                current[resource] = Effective(decision_id, decide_time)
        return Held({row[0] for row in await known.fetchall()}, current)

    async def write(self, transaction: Transaction, tenant_id: str, agent_id: str, writes: DecisionWrites) -> None:
        """Insert the decisions, supersede the old effective ones, open the review items."""
        connection = connection_of(transaction)
        rows, superseded, conflicts = writes.rows, writes.superseded, writes.conflicts
        if rows:
            await connection.execute(
                _INSERT,
                {
                    "tenant": tenant_id,
                    "agent": agent_id,
                    "ids": [r.record.decision_id for r in rows],
                    "resources": [r.record.resource for r in rows],
                    "times": [r.record.decide_time for r in rows],
                    "statuses": [r.status for r in rows],
                    "data": [r.record.data for r in rows],
                },
            )
        if superseded:
            await connection.execute(
                "UPDATE decisions SET status = %s WHERE decision_id = ANY(%b::text[])", (Status.SUPERSEDED, superseded)
            )
        if conflicts:
            await connection.execute(
                "INSERT INTO conflicts (conflict_id, tenant_id, edge_decision_id, central_decision_id, state)"
                " SELECT u.id::uuid, %s, u.edge, u.central, %s FROM unnest(%b::text[], %b::text[], %b::text[])"
                " AS u (id, edge, central)",
                (
                    tenant_id,
                    int(ConflictState.PENDING),
                    [c.conflict_id for c in conflicts],
                    [c.edge_decision_id for c in conflicts],
                    [c.central_decision_id for c in conflicts],
                ),
            )

    async def list_conflicts(
        self, tenant_id: str, state: ConflictState | None, after: tuple[datetime, str] | None, limit: int
    ) -> list[ConflictRecord]:
        """Review items oldest first."""
        sql = f"SELECT {_CONFLICT_COLUMNS} WHERE c.tenant_id = %s"
        params: list[Any] = [tenant_id]
        if state is not None:
            sql += " AND c.state = %s"
            params.append(int(state))
        if after is not None:
            sql += " AND (c.created_at, c.conflict_id) > (%s, %s::uuid)"
            params.extend(after)
        sql += " ORDER BY c.created_at, c.conflict_id LIMIT %s"
        params.append(limit)
        async with self._database.connection() as connection:
            cursor = await connection.execute(sql, params)
            return [_conflict(row) for row in await cursor.fetchall()]

    async def pending_conflicts(self) -> int:
        """Review items waiting for a person, all tenants."""
        async with self._database.connection() as connection:
            cursor = await connection.execute(
                "SELECT count(*) FROM conflicts WHERE state = %s", (int(ConflictState.PENDING),)
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    async def resolve(
        self, tenant_id: str, conflict_id: str, resolution: Resolution, resolver: str, note: str
    ) -> ConflictRecord | None:
        """Settle a pending item and make the chosen decision the effective one."""
        async with self._database.transaction() as connection:
            cursor = await connection.execute(
                "SELECT edge_decision_id, central_decision_id, state FROM conflicts"
                " WHERE conflict_id = %s::uuid AND tenant_id = %s FOR UPDATE",
                (conflict_id, tenant_id),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            edge_id, central_id, state = row
            if state == ConflictState.PENDING:
                cursor = await connection.execute("SELECT resource FROM decisions WHERE decision_id = %s", (edge_id,))
                resource_row = await cursor.fetchone()
                resources = [] if resource_row is None else [resource_row[0]]
                await _lock_resources(connection, tenant_id, resources)
                await connection.execute(
                    "UPDATE conflicts SET state = %s, resolution = %s, resolved_by = %s, resolved_at = now(), note = %s"
                    " WHERE conflict_id = %s::uuid",
                    (int(ConflictState.RESOLVED), int(resolution), resolver, note, conflict_id),
                )
                if resolution is Resolution.KEEP_EDGE:
                    # Whatever is effective on the resource now (the central decision, or a later one
                    # replayed since) gives way: one effective decision per resource, always.
                    await connection.execute(
                        "UPDATE decisions SET status = %s WHERE decision_id = %s", (Status.SUPERSEDED, central_id)
                    )
                    await connection.execute(
                        "UPDATE decisions SET status = %s WHERE tenant_id = %s AND resource = ANY(%s) AND status = %s",
                        (Status.SUPERSEDED, tenant_id, resources, Status.EFFECTIVE),
                    )
                    await connection.execute(
                        "UPDATE decisions SET status = %s WHERE decision_id = %s", (Status.EFFECTIVE, edge_id)
                    )
                else:
                    await connection.execute(
                        "UPDATE decisions SET status = %s WHERE decision_id = %s", (Status.REJECTED, edge_id)
                    )
            cursor = await connection.execute(
                f"SELECT {_CONFLICT_COLUMNS} WHERE c.conflict_id = %s::uuid", (conflict_id,)
            )
            found = await cursor.fetchone()
            return None if found is None else _conflict(found)
