"""Central's Prometheus metrics: edge states, policy watchers, open review items, snapshot leadership, ingest turns.

``aeterna_snapshot_leader`` is 1 on the one replica that takes the scheduled
snapshots (``central_svc.snapshots.SnapshotScheduler``) and 0 on the others,
so an operator (or a cluster test) can tell which replica leads.

The ingest gate's numbers (``central_svc.ingest_gate``) are read when scraped:
``aeterna_central_ingest_in_flight`` and ``aeterna_central_ingest_waiting``
batches, and ``aeterna_central_ingest_busy_total``, the batches answered
RESOURCE_EXHAUSTED ``INGEST_BUSY``; a rising busy count says this replica sheds
load (more replicas, or a larger ``postgresql.poolSize``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from central_svc.deps import CentralDeps
from central_svc.edges import EdgeState
from central_svc.ingest_gate import IngestGate
from central_svc.periodic import Periodic

_log = logging.getLogger(__name__)


class CentralMetrics:
    """Gauges refreshed in the background from the registry tables."""

    def __init__(self, registry: CollectorRegistry, deps: CentralDeps, interval: float = 15.0) -> None:
        self._deps = deps
        self.edges = Gauge("aeterna_edges", "Edges in central's registry, by state.", ["state"], registry=registry)
        self.online = Gauge("aeterna_edges_online", "Edges central considers online.", registry=registry)
        self.watchers = Gauge("aeterna_central_policy_watchers", "Connected policy watchers", registry=registry)
        self.snapshot_leader = Gauge(
            "aeterna_snapshot_leader", "1 when this replica takes the scheduled snapshots, else 0.", registry=registry
        )
        self.conflicts_open = Gauge(
            "aeterna_replay_conflicts_open",
            "Replayed decisions in conflict waiting for manual review (all tenants).",
            registry=registry,
        )
        registry.register(_IngestCollector(deps.ingest_gate))
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
        self.conflicts_open.set(await self._deps.decisions.pending_conflicts())

    def set_snapshot_leader(self, leading: bool) -> None:
        """Whether this replica leads the scheduled snapshots (``SnapshotScheduler``'s ``on_leading``)."""
        self.snapshot_leader.set(1 if leading else 0)

    def start(self) -> None:
        """Refresh every interval."""
        self._schedule.start()

    async def stop(self) -> None:
        """Stop refreshing."""
        await self._schedule.stop()


class _IngestCollector(Collector):
    """The ingest gate's counts, read at scrape time."""

    def __init__(self, gate: IngestGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        yield GaugeMetricFamily("aeterna_central_ingest_in_flight", "Batches being written now.", value=gate.in_flight)
        yield GaugeMetricFamily(
            "aeterna_central_ingest_waiting", "Batches waiting for a write turn now.", value=gate.waiting
        )
        yield CounterMetricFamily(
            "aeterna_central_ingest_busy",
            "Batches answered RESOURCE_EXHAUSTED (INGEST_BUSY): no write turn within sync.ingestWait.",
            value=gate.refused,
        )
