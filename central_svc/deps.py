"""Central's dependencies, built once by the wiring point (``__main__`` or a test) and passed in.

This is where the adapters of ``central_svc.store`` (PostgreSQL, pgvector,
Qdrant) are plugged into the ports (``central_svc.ports``) that the domain
modules depend on; nothing else in central's domain names a concrete store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aeterna_shared.config import AeternaConfig
from aeterna_shared.config.model import CentralSection, VectorDatabase
from central_svc.api.session_merge import ProtobufSessionMerger
from central_svc.edges import EdgeRegistry
from central_svc.episodes import EpisodicMemory
from central_svc.ingest_gate import IngestGate
from central_svc.policies import PolicyAuthority, PolicyHub
from central_svc.ports import BatchLedger, SnapshotSource, VectorIndex
from central_svc.replay import DecisionReplay
from central_svc.sessions import SessionSync
from central_svc.store.database import Database
from central_svc.store.decisions import PostgresDecisionStore
from central_svc.store.edges import PostgresEdgeStore
from central_svc.store.embedded_postgres import EmbeddedPostgres
from central_svc.store.episodes import PostgresEpisodeStore
from central_svc.store.ledger import PostgresBatchLedger
from central_svc.store.policies import PostgresPolicyStore
from central_svc.store.policy_listener import PolicyListener
from central_svc.store.sessions import PostgresSessionStore
from central_svc.store.settings import page_token_key
from central_svc.store.vectors_pgvector import PgVectorIndex
from central_svc.vectors import VectorSync


def utc_now() -> datetime:
    """The clock central uses (injectable for tests of freshness)."""
    return datetime.now(UTC)


@dataclass
class CentralDeps:
    """Everything the servicers need."""

    database: Database
    ledger: BatchLedger
    ingest_gate: IngestGate
    """The ledger's write turns (the same object as ``ledger``), for the metrics."""
    sessions: SessionSync
    vectors: VectorSync
    episodes: EpisodicMemory
    episode_store: SnapshotSource
    """Bulk access to episodes, for snapshots."""
    decisions: DecisionReplay
    edges: EdgeRegistry
    policies: PolicyAuthority
    listener: PolicyListener
    page_token_key: bytes
    snapshot_dir: Path
    clock: Any = utc_now


def snapshot_dir(central: CentralSection) -> Path:
    """Where episodic snapshots go: ``central.snapshotDir``, else ``<dataDir>/snapshots``."""
    return Path(central.snapshot_dir or Path(central.data_dir) / "snapshots")


def embedded_postgres(central: CentralSection) -> EmbeddedPostgres:
    """The embedded server central owns when ``postgresql.url`` is unset: ``<dataDir>/postgres``."""
    return EmbeddedPostgres(Path(central.data_dir) / "postgres")


def vector_index(settings: VectorDatabase, database: Database) -> VectorIndex:
    """The configured vector graph backend (``vectorDatabase``)."""
    if settings.backend == "qdrant":
        if not settings.qdrant_url:
            raise ValueError("vectorDatabase.backend is qdrant but vectorDatabase.qdrantUrl is not set")
        from central_svc.store.vectors_qdrant import QdrantVectorIndex  # noqa: PLC0415 - optional extra

        return QdrantVectorIndex(settings.qdrant_url, settings.collection, settings.dimension)
    return PgVectorIndex(database)


async def build_deps(config: AeternaConfig, database: Database) -> CentralDeps:
    """Wire the domain objects on an opened ``database`` (the listener is created, not started)."""
    # Batches wait here for a write turn, not on the pool (``central_svc.ingest_gate``).
    ledger = IngestGate(
        PostgresBatchLedger(database),
        concurrency=config.sync.ingest_concurrency or config.postgresql.pool_size,
        wait=config.sync.ingest_wait.total_seconds(),
    )
    policy_store = PostgresPolicyStore(database)
    hub = PolicyHub(policy_store)
    episode_store = PostgresEpisodeStore(database)
    dimension = config.vector_database.dimension
    return CentralDeps(
        database=database,
        ledger=ledger,
        ingest_gate=ledger,
        sessions=SessionSync(ledger, PostgresSessionStore(database), ProtobufSessionMerger()),
        vectors=VectorSync(ledger, vector_index(config.vector_database, database), dimension),
        episodes=EpisodicMemory(ledger, episode_store, dimension),
        episode_store=episode_store,
        decisions=DecisionReplay(
            ledger,
            PostgresDecisionStore(database),
            config.aeterna.offline.conflict_resolution,
            config.aeterna.offline.conflict_resolution_by_action,
        ),
        edges=EdgeRegistry(PostgresEdgeStore(database), config.sync.offline_after),
        policies=PolicyAuthority(policy_store, hub),
        listener=PolicyListener(database.direct_conninfo, hub.refresh),
        page_token_key=await page_token_key(database),
        snapshot_dir=snapshot_dir(config.central),
    )
