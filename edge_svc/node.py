"""The edge node as one object: its parts, and the operations that span several of them.

``EdgeNode`` is what the servicer is given. It holds no globals; ``deps.open_edge``
builds it from configuration, and tests may build it around real stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from aeterna_shared.config.model import EdgeSection
from aeterna_shared.errors import NotFound, PermissionDenied, Unavailable
from edge_svc.link import LinkMonitor
from edge_svc.memory import SessionMemory, WorkingMemory
from edge_svc.policy import CedarAgent, PolicyWatcher
from edge_svc.ports import Central, ChannelStats, Outbox
from edge_svc.records import Channel, EpisodeRecord, JsonDict, Message, SessionRecord
from edge_svc.sync import SyncEngine
from edge_svc.vectors import VectorIndex, validate_embedding

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeStatus:
    """What ``GetEdgeStatus`` and ``aeterna status`` show."""

    agent_id: str
    region: str
    online: bool
    link_change_time: float
    consecutive_failures: int
    queues: list[ChannelStats]
    policy_version: int
    local_sessions: int
    local_vectors: int
    incarnation_id: str = ""
    """Identity of this edge's local state (the outbox's incarnation id)."""
    degraded: dict[Channel, str] = field(default_factory=dict)
    """Channels that cannot make progress although the link is online, with why (``SyncEngine.degraded``)."""


@dataclass(frozen=True)
class NodeSettings:
    """What the node itself reads: who this edge is, and how an episode reaches central."""

    edge: EdgeSection
    """This edge's identity: ``agentId``, ``region``, the ``tenantId`` it serves (and its ``dataDir``)."""
    episode_mode: Literal["eventual", "strong"]
    """``sync.episodicMemory.mode``: ``strong`` stores an episode at central before the call returns."""
    episode_sync: bool
    """``sync.enabled`` and ``sync.episodicMemory.enabled``: eventual episodes are queued for central."""


@dataclass
class EdgeNode:
    """Every part of one edge."""

    settings: NodeSettings
    working: WorkingMemory
    sessions: SessionMemory
    vectors: VectorIndex
    agent: CedarAgent
    watcher: PolicyWatcher
    sync: SyncEngine
    link: LinkMonitor
    outbox: Outbox
    central: Central

    def tenant_of(self, tenant: str) -> str:
        """The caller's tenant, which must be the one this edge serves."""
        if tenant != self.settings.edge.tenant_id:
            raise PermissionDenied(
                f"this edge serves tenant {self.settings.edge.tenant_id!r}; the credential is for {tenant!r}",
                reason="TENANT_MISMATCH",
                metadata={"tenant_id": tenant},
            )
        return tenant

    async def get_session(self, tenant: str, session_id: str) -> tuple[SessionRecord, bool]:
        """(session, from_central): local first, then read through from central when online."""
        local = await self.sessions.get(tenant, session_id)
        if local is not None:
            return local, False
        if not self.link.online:
            raise NotFound(
                f"session {session_id!r} is not cached at this edge, and central was not asked "
                "because the edge is offline",
                reason="SESSION_NOT_CACHED_OFFLINE",
                metadata={"session_id": session_id},
            )
        remote = await self.central.get_session(session_id)
        if remote is None:
            raise NotFound(
                f"session {session_id!r} exists neither at this edge nor at central",
                reason="SESSION_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        await self.sessions.cache_copy(tenant, remote)
        return remote, True

    async def append_session(
        self, tenant: str, *, session_id: str, user_id: str, messages: list[Message], state_patch: JsonDict
    ) -> SessionRecord:
        """Append turns to a session, wherever it lives now.

        A session the edge does not hold is read through from central first
        when the link is up, so the local copy is whole. Offline (or when
        central cannot answer) the append starts a partial local copy: only
        the new turns travel, and central merges them after the turns it
        already holds, so an offline append never overwrites a conversation.
        """
        base: SessionRecord | None = None
        partial = False
        if await self.sessions.get(tenant, session_id) is None:
            if self.link.online:
                try:
                    base = await self.central.get_session(session_id)
                except Unavailable:
                    partial = True
            else:
                partial = True
        return await self.sessions.append(
            tenant,
            session_id=session_id,
            user_id=user_id,
            messages=messages,
            state_patch=state_patch,
            base=base,
            partial=partial,
        )

    async def append_episode(self, tenant: str, episode: EpisodeRecord) -> bool:
        """Record an episode by the configured mode; returns whether central has stored it."""
        episode.tenant_id = tenant
        if episode.embedding:
            validate_embedding("episode.embedding", episode.embedding, self.vectors.dimension)
        if self.settings.episode_mode == "strong":
            await self.sync.store_episode_now(episode)
            return True
        if not self.settings.episode_sync:
            raise Unavailable("episodic sync is disabled on this edge; the episode cannot reach central")
        await self.sync.queue_episode(episode)
        return False

    async def status(self) -> EdgeStatus:
        """A snapshot of the edge's state."""
        tenant = self.settings.edge.tenant_id
        queues = await asyncio.to_thread(self.outbox.stats)
        return EdgeStatus(
            agent_id=self.settings.edge.agent_id,
            region=self.settings.edge.region,
            online=self.link.online,
            link_change_time=self.link.state.changed_at,
            consecutive_failures=self.link.state.consecutive_failures,
            queues=queues,
            policy_version=self.agent.version,
            local_sessions=await self.sessions.count(tenant),
            local_vectors=await asyncio.to_thread(self.vectors.count),
            incarnation_id=self.outbox.incarnation_id,
            degraded=self.sync.degraded(),
        )

    async def start(self) -> None:
        """Run the first health check, then start every loop."""
        await self.link.check_once()
        self.link.start()
        self.sync.start()
        self.watcher.start()

    async def shutdown(self, grace: float) -> None:
        """Flush what can be flushed, announce the departure, stop the loops."""
        started = time.monotonic()
        await self.watcher.stop()
        await self.sync.stop()
        if self.link.online:
            try:
                async with asyncio.timeout(max(grace, 0.1)):
                    await self.sync.flush()
            except Exception as error:
                _log.warning("final flush incomplete, the rest stays in the outbox: %s", error)
            try:
                async with asyncio.timeout(5.0):
                    await self.central.announce_offline("shutdown")
            except Exception as error:
                _log.warning("could not tell central that this edge goes offline: %s", error)
        await self.link.stop()
        await self.vectors.close()
        _log.info("edge node stopped in %.1fs", time.monotonic() - started)
