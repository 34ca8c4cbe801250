"""Central's Prometheus metrics: edge states and policy watchers, in a registry passed in (no globals)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge

from central_svc.deps import CentralDeps
from central_svc.edges import EdgeState
from central_svc.periodic import Periodic

_log = logging.getLogger(__name__)


class CentralMetrics:
    """Gauges refreshed in the background from the registry tables."""

    def __init__(self, registry: CollectorRegistry, deps: CentralDeps, interval: float = 15.0) -> None:
        self._deps = deps
        self.edges = Gauge("aeterna_edges", "Edges in central's registry, by state.", ["state"], registry=registry)
        self.online = Gauge("aeterna_edges_online", "Edges central considers online.", registry=registry)
        self.watchers = Gauge("aeterna_central_policy_watchers", "Connected policy watchers", registry=registry)
        self._schedule = Periodic("central-metrics", interval, self.refresh, first_now=True)

    async def refresh(self) -> None:
        """Recount edges by state."""
        counts = dict.fromkeys(EdgeState, 0)
        after = ""
        while True:
            views = await self._deps.edges.page(None, after, 1000, self._deps.clock())
            for view in views:
                counts[view.state] += 1
            if len(views) < 1000:
                break
            after = views[-1].row.agent_id
        for state, count in counts.items():
            self.edges.labels(state=state.name.lower()).set(count)
        self.online.set(counts[EdgeState.ONLINE])
        self.watchers.set(self._deps.policies.hub.watcher_count)

    def start(self) -> None:
        """Refresh every interval."""
        self._schedule.start()

    async def stop(self) -> None:
        """Stop refreshing."""
        await self._schedule.stop()
