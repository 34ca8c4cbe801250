"""The edge's dependencies: opened once by the wiring point (``__main__``, a test or the bench), closed again.

``open_edge(config) -> EdgeDeps`` locks the data directory (one edge per
directory), opens the stores (starting the owned redis-servers when
``cache.url`` is unset, or checking the external session store when it is
set), the outbox with its per-channel limits, the vector shard, the policy
agent and the link, and builds the node; no loop is started and nothing is
served yet. Whatever it opened is closed again when a later step fails, so a
failed start leaves no redis-server behind. ``EdgeDeps.close`` closes it all.

The whole configuration stops here: each component is handed only its own
section (``LinkMonitor`` the health check, ``RedisCache`` a URL) or a small
frozen record of the values it reads from several sections (``CentralLink``,
``VectorSettings``, ``NodeSettings``), derived once here.

Two caches, two roles. Session memory and its dirty index must never be
evicted; working memory is the only evictable layer. So in owned mode the edge
runs two redis-servers, each alone in its own directory of ``edge.dataDir``:

* ``redis-sessions/``: ``volatile-lru`` with ``maxmemory`` =
  ``cache.layers.session.maxSize`` (0: unbounded), append-only file fsynced
  on every write. Unsynced sessions, their pending changes and the dirty index
  have no TTL, so only synced copies (central holds them) can be evicted;
  when nothing else can go, writes are refused (RESOURCE_EXHAUSTED);
* ``redis-working/``: ``maxmemory`` = ``cache.layers.working.maxSize`` with
  ``cache.layers.working.evictionPolicy``, nothing persisted.

The session store is ``cache.url`` or the owned sessions server. Working
memory uses ``cache.workingUrl``, else the owned working server in owned mode,
else shares ``cache.url`` (and then never evicts).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from aeterna_client.channel import central_metadata, central_settings
from aeterna_security.keys import edge_signing_key
from aeterna_shared.config import AeternaConfig
from aeterna_shared.config.model import CacheConfig
from aeterna_shared.errors import FailedPrecondition
from aeterna_shared.process_lock import DataDirLock, processes_working_in
from edge_svc.api.central_client import CentralLink, GrpcCentral
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory, WorkingMemory
from edge_svc.metrics import OutboxCollector, SyncMetrics
from edge_svc.node import EdgeNode, NodeSettings
from edge_svc.policy import CedarAgent, PolicyWatcher
from edge_svc.records import Channel
from edge_svc.store.bundle_file import BundleFile
from edge_svc.store.cache import RedisCache
from edge_svc.store.cache_check import check_session_store
from edge_svc.store.outbox import ChannelLimits, SqliteOutbox
from edge_svc.store.redis_server import EVICTION_POLICIES, OwnedRedis
from edge_svc.store.vectors import QdrantEdgeStore
from edge_svc.sync import SyncEngine
from edge_svc.vectors import VectorIndex, VectorSettings

_log = logging.getLogger("edge_svc")

EDGE_LOCK_FILE = "edge.lock"
"""Lock file in ``edge.dataDir``, held by the one edge using that directory."""
SESSIONS_REDIS_DIR = "redis-sessions"
"""The owned session store's directory in ``edge.dataDir``."""
SESSION_EVICTION_POLICY = "volatile-lru"
"""Evicts only keys with a TTL: synced session copies, never unsynced sessions or the dirty index."""
WORKING_REDIS_DIR = "redis-working"
"""The owned working-memory server's directory in ``edge.dataDir``."""
OUTBOX_FILE = "outbox.sqlite3"
"""The outbox's SQLite database in ``edge.dataDir``."""
LEGACY_REDIS_DIR = "redis"
"""Where edges before the two roles kept their one owned Redis (sessions included)."""


@dataclass
class LocalStores:
    """What start-up opens on the local machine: the lock, the owned servers, the outbox, the vector shard."""

    lock: DataDirLock
    owned_sessions: OwnedRedis | None
    owned_working: OwnedRedis | None
    outbox: SqliteOutbox
    store: QdrantEdgeStore

    def close(self) -> None:
        """Close the stores, stop the owned servers and give the directory up (each step even if one fails)."""
        with contextlib.ExitStack() as stack:
            stack.callback(self.lock.release)
            for owned in (self.owned_sessions, self.owned_working):
                if owned is not None:
                    stack.callback(owned.stop)
            stack.callback(self.outbox.close)
            stack.callback(_close_quietly, self.store)


def _close_quietly(store: QdrantEdgeStore) -> None:
    with contextlib.suppress(Exception):
        store.close()


@dataclass
class EdgeDeps:
    """What the edge opened and must close on shutdown."""

    node: EdgeNode
    session_cache: RedisCache
    working_cache: RedisCache
    local: LocalStores
    config: AeternaConfig
    """The configuration the edge was opened with (the server is bound and served by it)."""

    @property
    def store(self) -> QdrantEdgeStore:
        """The vector shard."""
        return self.local.store

    @property
    def owned_sessions(self) -> OwnedRedis | None:
        """The owned session store, in owned mode."""
        return self.local.owned_sessions

    @property
    def owned_working(self) -> OwnedRedis | None:
        """The owned working-memory server, in owned mode without ``cache.workingUrl``."""
        return self.local.owned_working

    async def close(self) -> None:
        """Close the link, the caches and the stores, then stop the owned servers (reverse order of opening)."""
        try:
            await self.node.central.close()
            await self.working_cache.close()
            await self.session_cache.close()
        finally:
            self.local.close()


def outbox_path(data_dir: Path) -> Path:
    """The outbox's database in an edge's data directory."""
    return data_dir / OUTBOX_FILE


def outbox_limits(config: AeternaConfig) -> dict[Channel, ChannelLimits]:
    """Per-channel limits: sync.offline for data, aeterna.offline.maxQueueSize for decisions."""
    ttl = config.sync.offline.queue_ttl.total_seconds()
    size = config.sync.offline.max_queue_size
    limits = {channel: ChannelLimits(size, ttl) for channel in Channel}
    limits[Channel.DECISIONS] = ChannelLimits(config.aeterna.offline.max_queue_size, ttl)
    return limits


def _adopt_legacy_redis_dir(data_dir: Path) -> None:
    """An edge from before the two roles kept sessions (and their append-only file) in ``redis/``:
    those files become the session store's, so that nothing acknowledged is left behind."""
    legacy = data_dir / LEGACY_REDIS_DIR
    target = data_dir / SESSIONS_REDIS_DIR
    if not legacy.is_dir() or target.exists():
        return
    users = processes_working_in(legacy)
    if users:
        pids = ", ".join(str(pid) for pid in users)
        raise FailedPrecondition(
            f"{legacy} (the owned Redis of an older edge) is still used by pid {pids}: "
            "stop that process, then start the edge again",
            reason="DATA_DIR_IN_USE",
            metadata={"directory": str(legacy), "pid": pids},
        )
    (legacy / "redis.sock").unlink(missing_ok=True)
    legacy.rename(target)
    _log.warning("moved the session data of an older edge from %s to %s", legacy, target)


def _open_local(config: AeternaConfig) -> LocalStores:
    """The blocking part of start-up: the lock, the owned Redis servers, the outbox and the vector shard.

    When a step fails, what the earlier steps started is stopped again. Run
    it on the main thread: the owned servers are told to die with the thread
    that started them (``PR_SET_PDEATHSIG``), see ``aeterna_shared.process_lock``.
    """
    data_dir = Path(config.edge.data_dir).absolute()
    with contextlib.ExitStack() as stack:
        lock = DataDirLock.acquire(data_dir, name=EDGE_LOCK_FILE, what="edge data directory")
        stack.callback(lock.release)
        sessions: OwnedRedis | None = None
        working: OwnedRedis | None = None
        if config.cache.url is None:
            _adopt_legacy_redis_dir(data_dir)
            layers = config.cache.layers
            sessions = OwnedRedis.start(
                data_dir / SESSIONS_REDIS_DIR,
                maxmemory=layers.session.max_size,
                policy=SESSION_EVICTION_POLICY,
                durable=True,
            )
            stack.callback(sessions.stop)
            if config.cache.working_url is None:
                working = OwnedRedis.start(
                    data_dir / WORKING_REDIS_DIR,
                    maxmemory=layers.working.max_size,
                    policy=EVICTION_POLICIES[layers.working.eviction_policy],
                    durable=False,
                )
                stack.callback(working.stop)
        outbox = SqliteOutbox(outbox_path(data_dir), outbox_limits(config))
        stack.callback(outbox.close)
        store = QdrantEdgeStore(data_dir / "vectors", config.vector_database.dimension, config.qdrant.hnsw)
        stack.pop_all()
        return LocalStores(lock, sessions, working, outbox, store)


def cache_urls(cache: CacheConfig, local: LocalStores) -> tuple[str, str]:
    """(session store URL, working memory URL) for this ``cache`` section and the servers start-up owns."""
    session_url = cache.url
    if session_url is None:
        assert local.owned_sessions is not None  # owned mode always starts the session store
        session_url = local.owned_sessions.url
    working_url = cache.working_url
    if working_url is None:
        working_url = local.owned_working.url if local.owned_working is not None else session_url
    return session_url, working_url


def central_link(config: AeternaConfig) -> CentralLink:
    """How this edge reaches central, who it is there and how it signs (``GrpcCentral``'s settings)."""
    return CentralLink(
        target=config.sync.central_server.target,
        settings=central_settings(config),
        metadata=central_metadata(config),
        signing_key=edge_signing_key(config.sync.signing),
        agent_id=config.edge.agent_id,
        region=config.edge.region,
        failure_threshold=config.central_server.health_check.failure_threshold,
    )


async def open_edge(config: AeternaConfig, registry: CollectorRegistry | None = None) -> EdgeDeps:
    """Open every store and build the node (no loop started yet); on failure, close what was opened.

    With a ``registry`` the node reports its sync outcomes and outbox state
    there (the process registry in production; none in in-process tests, which
    may build several nodes in one process).
    """
    async with contextlib.AsyncExitStack() as stack:
        # On this (the main) thread on purpose, see _open_local; nothing is served yet.
        local = _open_local(config)
        stack.callback(local.close)
        data_dir = local.lock.directory
        if config.cache.url is not None:
            await check_session_store(config.cache.url, allow_unsafe=config.cache.allow_unsafe_cache)
        session_url, working_url = cache_urls(config.cache, local)
        session_cache = RedisCache(session_url)
        stack.push_async_callback(session_cache.close)
        working_cache = RedisCache(working_url)
        stack.push_async_callback(working_cache.close)
        await session_cache.ping()
        await working_cache.ping()
        link_settings = central_link(config)
        central = GrpcCentral(link_settings, incarnation_id=local.outbox.incarnation_id)
        stack.push_async_callback(central.close)
        link = LinkMonitor(config.central_server.health_check, central.check_health, enabled=config.sync.enabled)
        sessions = SessionMemory(session_cache, config.cache.layers.session.ttl)
        sync = SyncEngine(
            config, local.outbox, central, link, sessions, metrics=SyncMetrics(registry) if registry else None
        )
        sessions.on_dirty = sync.session_written
        layer = config.cache.layers.working
        working = WorkingMemory(working_cache, layer.ttl, max_ttl=layer.max_ttl, cap_ttl=layer.ttl_overflow == "cap")
        vector_settings = VectorSettings(
            region=config.edge.region,
            dimension=config.vector_database.dimension,
            cache=config.qdrant.cache,
            central_timeout=link_settings.settings.unary_timeout,
        )
        vectors = VectorIndex(vector_settings, local.store, central, link, sync)
        agent = CedarAgent(BundleFile(data_dir / "policy" / "bundle.json"), sync, link)
        watcher = PolicyWatcher(agent, central, link, sync.retry_base)
        episodes = config.sync.episodic_memory
        node_settings = NodeSettings(
            edge=config.edge,
            episode_mode=episodes.mode,
            episode_sync=config.sync.enabled and episodes.enabled,
        )
        node = EdgeNode(node_settings, working, sessions, vectors, agent, watcher, sync, link, local.outbox, central)
        if registry is not None:
            registry.register(OutboxCollector(local.outbox, lambda: link.online, lambda: agent.version, sync.degraded))
        stack.pop_all()
        return EdgeDeps(node, session_cache, working_cache, local, config)
    raise AssertionError("unreachable")  # pragma: no cover - the stack never swallows an exception
