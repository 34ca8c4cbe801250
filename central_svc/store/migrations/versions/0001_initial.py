"""Initial schema: sessions, batch ledger, checkpoints, edges, decisions, conflicts, episodes, vectors, policies.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import secrets

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table central needs; the vector dimension comes from configuration."""
    dimension = int(context.config.attributes.get("vector_dimension", 384))
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # Sessions keep the edge's deterministic protobuf encoding: it is what the
    # checksum covers, it costs nothing to produce, and GetSession returns it as is.
    op.execute(
        """
        CREATE TABLE session_memory (
            session_id    text PRIMARY KEY,
            tenant_id     text NOT NULL,
            agent_id      text NOT NULL,
            user_id       text NOT NULL DEFAULT '',
            data          bytea NOT NULL,
            last_activity timestamptz NOT NULL,
            checksum      text NOT NULL,
            synced_at     timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX session_memory_tenant_activity ON session_memory (tenant_id, last_activity)")
    op.execute(
        """
        CREATE TABLE sync_batches (
            batch_id   text PRIMARY KEY,
            agent_id   text NOT NULL,
            channel    smallint NOT NULL,
            sequence   bigint NOT NULL,
            digest     bytea NOT NULL,
            ack        bytea,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE sync_checkpoints (
            agent_id      text NOT NULL,
            channel       smallint NOT NULL,
            contiguous    bigint NOT NULL DEFAULT 0,
            applied_above bigint[] NOT NULL DEFAULT '{}',
            updated_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (agent_id, channel)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE edges (
            agent_id        text PRIMARY KEY,
            tenant_id       text NOT NULL,
            region          text NOT NULL DEFAULT '',
            last_sync_at    timestamptz,
            last_seen_at    timestamptz NOT NULL DEFAULT now(),
            departed_at     timestamptz,
            departed_reason text NOT NULL DEFAULT ''
        )
        """
    )
    op.execute(
        """
        CREATE TABLE decisions (
            decision_id text PRIMARY KEY,
            tenant_id   text NOT NULL,
            agent_id    text NOT NULL,
            resource    text NOT NULL,
            decide_time timestamptz NOT NULL,
            status      text NOT NULL,
            data        bytea NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX decisions_effective ON decisions (tenant_id, resource) WHERE status = 'effective'")
    op.execute(
        """
        CREATE TABLE conflicts (
            conflict_id         uuid PRIMARY KEY,
            tenant_id           text NOT NULL,
            edge_decision_id    text NOT NULL REFERENCES decisions (decision_id),
            central_decision_id text NOT NULL REFERENCES decisions (decision_id),
            state               smallint NOT NULL,
            resolution          smallint NOT NULL DEFAULT 0,
            resolved_by         text NOT NULL DEFAULT '',
            resolved_at         timestamptz,
            note                text NOT NULL DEFAULT '',
            created_at          timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX conflicts_tenant_state ON conflicts (tenant_id, state, created_at, conflict_id)")
    op.execute(
        f"""
        CREATE TABLE episodes (
            episode_id  text PRIMARY KEY,
            tenant_id   text NOT NULL,
            session_id  text NOT NULL DEFAULT '',
            agent_id    text NOT NULL,
            content     text NOT NULL DEFAULT '',
            embedding   vector({dimension}),
            occur_time  timestamptz NOT NULL,
            data        bytea NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX episodes_tenant_time ON episodes (tenant_id, occur_time, episode_id)")
    op.execute(
        f"""
        CREATE TABLE vectors (
            tenant_id   text NOT NULL,
            vector_id   text NOT NULL,
            region      text NOT NULL DEFAULT '',
            agent_id    text NOT NULL,
            embedding   vector({dimension}) NOT NULL,
            payload     jsonb NOT NULL DEFAULT '{{}}',
            update_time timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, vector_id)
        )
        """
    )
    op.execute("CREATE INDEX vectors_embedding_hnsw ON vectors USING hnsw (embedding vector_cosine_ops)")
    op.execute(
        """
        CREATE TABLE policy_bundles (
            version      bigint PRIMARY KEY,
            data         bytea NOT NULL,
            checksum     text NOT NULL,
            publisher    text NOT NULL DEFAULT '',
            published_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Secrets every replica must share (the page-token MAC key) live in the database they share.
    op.execute("CREATE TABLE server_settings (name text PRIMARY KEY, value bytea NOT NULL)")
    op.execute(
        f"INSERT INTO server_settings (name, value) VALUES ('page_token_key', '\\x{secrets.token_hex(32)}'::bytea)"
    )


def downgrade() -> None:
    """Drop everything upgrade created."""
    for table in (
        "server_settings",
        "policy_bundles",
        "vectors",
        "episodes",
        "conflicts",
        "decisions",
        "edges",
        "sync_checkpoints",
        "sync_batches",
        "session_memory",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
