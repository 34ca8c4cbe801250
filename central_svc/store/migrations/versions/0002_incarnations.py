"""Edge incarnations: checkpoints and the ledger count per (agent id, incarnation, channel).

An incarnation is the identity of an edge's local state: a UUID its outbox
makes once, when its data directory is created (``BatchHeader.incarnation_id``).
An edge restarted on an empty data directory with the same agent id is a new
incarnation whose sequences start again at 1, so checkpoints are kept per
incarnation: its batches are never taken for ones already applied.

Batches of a previous incarnation that still arrive (an old copy of the edge
still running, or its outbox restored from a backup) are applied under that
incarnation's own checkpoint; nothing is dropped. They do not make it the
current incarnation again.

* ``sync_checkpoints``: ``incarnation_id`` joins the primary key
  (agent_id, incarnation_id, channel);
* ``sync_batches``: records the ``incarnation_id`` of every batch (the
  primary key stays ``batch_id``, a UUID, unique across incarnations);
* ``edge_incarnations``: every incarnation seen per agent id, with when it was
  first and last heard from and how many of its batches were applied;
* ``edges``: the current (newest) incarnation, when it started, and how many
  incarnations were seen.

Existing rows belong to the empty incarnation '' (edges that predate
incarnations keep it: their outboxes keep their sequences). An edge with
ledger entries counts one incarnation, started at its first recorded batch.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the incarnation columns and table; existing rows get incarnation ''."""
    op.execute("ALTER TABLE sync_batches ADD COLUMN incarnation_id text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE sync_checkpoints ADD COLUMN incarnation_id text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE sync_checkpoints DROP CONSTRAINT sync_checkpoints_pkey")
    op.execute("ALTER TABLE sync_checkpoints ADD PRIMARY KEY (agent_id, incarnation_id, channel)")
    op.execute(
        """
        CREATE TABLE edge_incarnations (
            agent_id       text NOT NULL,
            incarnation_id text NOT NULL,
            first_seen_at  timestamptz NOT NULL DEFAULT now(),
            last_seen_at   timestamptz NOT NULL DEFAULT now(),
            batches        bigint NOT NULL DEFAULT 1,
            PRIMARY KEY (agent_id, incarnation_id)
        )
        """
    )
    op.execute(
        """
        INSERT INTO edge_incarnations (agent_id, incarnation_id, first_seen_at, last_seen_at, batches)
        SELECT agent_id, '', min(created_at), max(created_at), count(*) FROM sync_batches GROUP BY agent_id
        """
    )
    op.execute(
        """
        ALTER TABLE edges
            ADD COLUMN incarnation_id         text NOT NULL DEFAULT '',
            ADD COLUMN incarnation_started_at timestamptz,
            ADD COLUMN incarnation_count      integer NOT NULL DEFAULT 0
        """
    )
    op.execute(
        """
        UPDATE edges e SET incarnation_started_at = i.first_seen_at, incarnation_count = 1
        FROM edge_incarnations i WHERE i.agent_id = e.agent_id AND i.incarnation_id = ''
        """
    )


def downgrade() -> None:
    """Back to one checkpoint per (agent id, channel): only the empty incarnation's rows can stay."""
    op.execute(
        "ALTER TABLE edges DROP COLUMN incarnation_count, DROP COLUMN incarnation_started_at,"
        " DROP COLUMN incarnation_id"
    )
    op.execute("DROP TABLE edge_incarnations")
    op.execute("DELETE FROM sync_checkpoints WHERE incarnation_id <> ''")
    op.execute("ALTER TABLE sync_checkpoints DROP CONSTRAINT sync_checkpoints_pkey")
    op.execute("ALTER TABLE sync_checkpoints ADD PRIMARY KEY (agent_id, channel)")
    op.execute("ALTER TABLE sync_checkpoints DROP COLUMN incarnation_id")
    op.execute("ALTER TABLE sync_batches DROP COLUMN incarnation_id")
